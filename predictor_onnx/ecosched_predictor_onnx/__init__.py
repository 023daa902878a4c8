"""The ONNX response-length predictor (training, export, inference, the shipped model).
It implements `ecosched.core.predictor.LengthPredictor`; it lands with its own issue."""
