/* adapter: a LoRA adapter on disk, as the folder Hugging Face PEFT (0.21)
 * writes and PeftModel.from_pretrained reads (DESIGN.md, format 4).
 *
 *   DIR/adapter_config.json        PEFT's LoraConfig.to_dict(): every key
 *                                  0.21.2 writes, json.dumps(indent=2,
 *                                  sort_keys=True) byte for byte; ours sets
 *                                  peft_type "LORA", task_type "CAUSAL_LM", r,
 *                                  lora_alpha (an integer when whole), lora_dropout,
 *                                  use_rslora, target_modules, base_model_name_or_path,
 *                                  inference_mode true, the rest PEFT's defaults
 *   DIR/adapter_model.safetensors  per adapted projection, fp32:
 *       base_model.model.model.layers.{l}.self_attn.q_proj.lora_A.weight   A, rank × in
 *       base_model.model.model.layers.{l}.self_attn.q_proj.lora_B.weight   B, out × rank
 *     (mlp.gate_proj ... for the MLP), with metadata {"format": "pt"} as
 *     PEFT's save_file call writes it.
 *
 * target_modules is the list of the adapted projections' names ("q_proj",
 * ... in q, k, v, o, gate, up, down order; PEFT writes a set, in no fixed
 * order). A multimodal Gemma 3 (Gemma3ForConditionalGeneration) keeps its
 * text layers under model.language_model., so its keys read
 * base_model.model.model.language_model.layers.{l}..., and target_modules is
 * then a regular expression PEFT matches against whole module names,
 * confined to the language model (a list would adapt the vision tower's
 * q_proj, k_proj and v_proj too):
 *     model\.language_model\.layers\.\d+\.(self_attn\.(q_proj|v_proj)|mlp\.(up_proj))
 *
 * Reading takes a folder ours or PEFT's: tensors F32, F16, BF16 (or F64),
 * key prefixes base_model.model.model.layers. (text models),
 * base_model.model.model.language_model.layers. (Gemma 3 multimodal,
 * transformers >= 4.52) or base_model.model.language_model.model.layers.
 * (older). The tensors are the truth about what is adapted; every one must
 * be a lora_A / lora_B of a projection of a layer the model has, and they
 * must agree with target_modules and exclude_modules as PEFT would apply
 * them (a list entry matches a module whose name is it or ends in "." + it;
 * a string is a regular expression matching the whole name), the same
 * projections in every layer. Refused, with the file and key named: a missing or unexpected
 * tensor, a shape other than the model's, a non-finite value, and settings
 * that change what the adapter computes and lorapipe does not implement
 * (bias other than "none", use_dora, lora_bias, non-empty rank_pattern /
 * alpha_pattern, modules_to_save, layers_to_transform, layer_replication,
 * target_parameters, trainable_token_indices, alora_invocation_tokens,
 * use_qalora, variant configs, init_lora_weights that rewrite the base
 * weights: anything but true, false, "gaussian"). Keys it does not know
 * are ignored, as PEFT ignores them.
 */
#ifndef LORAPIPE_ADAPTER_H
#define LORAPIPE_ADAPTER_H

#include "lora.h"
#include "model.h"
#include "msg.h"

struct peft_save_opts {
	const char *base_model; /* base_model_name_or_path; NULL writes null */
	int multimodal;         /* Gemma3ForConditionalGeneration key layout (see above) */
};

/* Writes lo as the folder dir. The folder appears whole: it is written as a
 * hidden sibling (".NAME.tmp-XXXXXX"), fsynced, then renamed into place; an
 * existing folder is swapped out in one rename (renameat2 RENAME_EXCHANGE,
 * or two renames where the file system cannot exchange), and whatever it
 * held besides the two adapter files (training_args.json, log.jsonl,
 * checkpoint-*, README.md ...) is moved into the new folder before the old
 * one is removed. dir must not exist or be a folder (a symbolic link to a
 * folder has the folder replaced). A failure before the swap leaves nothing
 * new behind and an existing folder as it was; one after it (moving the
 * other entries, removing the old folder) says that the adapter is saved
 * and where the leftovers are. o may be NULL (base model null, text layout). */
int lora_save_peft(const struct lora *lo, const char *dir, const struct peft_save_opts *o, struct err *err);

/* What lora_load_peft read besides the adapter. */
struct peft_info {
	int multimodal;        /* keys were under language_model */
	char base_model[512];  /* base_model_name_or_path, "" when null (cut if longer) */
};

/* Reads the folder dir (see above) for a model of configuration mc. info
 * may be NULL. Errors read "DIR/adapter_model.safetensors: tensor
 * 'base_model...q_proj.lora_A.weight': shape [8, 32], expected [8, 64]". */
struct lora *lora_load_peft(const char *dir, const struct model_config *mc, struct peft_info *info,
			    struct err *err);

/* Whether the model at path (a Hugging Face folder, or a .safetensors file
 * with config.json beside it) is Gemma3ForConditionalGeneration, whose
 * adapters take the multimodal layout: config.json's model_type "gemma3".
 * A GGUF file or a folder without config.json: 0. */
int peft_model_multimodal(const char *path, int *multimodal, struct err *err);

#endif
