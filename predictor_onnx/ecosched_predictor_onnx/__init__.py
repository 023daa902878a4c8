"""The ONNX response-length predictor: an implementation of `ecosched.core.predictor.LengthPredictor`
(registered as the predictor `onnx` through the entry-point group `ecosched.predictors`), its training,
export, evaluation and the shipped model (`model/`, with `MODEL_CARD.md`).

Modules: `data` (ShareGPT recovery, chat rendering, splits), `tokenizer` (the length unit), `features`,
`network` (numpy), `settings` and `train`, `export` (ONNX), `calibrate` (quantiles), `runtime`
(onnxruntime session, `OnnxPredictor`, `load_model`), `evaluate`, `log` (`PredictionLog` for online
learning), `pipeline` (train or refit, then export and calibrate) and `cli`. Importing this package
loads nothing heavy; numpy, onnxruntime and tokenizers load with the modules that need them.
"""
