/* chat_templates: the built-in chat templates, for models that ship none
 * (base models being taught a chat format). Each follows the published
 * format of its family; the turn closer is a special token (or eos_token) so
 * that the learned span ends on a marker the model can stop at.
 */
#include <string.h>

#include "chat.h"

static const struct {
	const char *name, *src;
} builtins[] = {
	/* ChatML (Qwen, SmolLM2, Hermes), tool calls as Hermes-style <tool_call> JSON. */
	{"chatml",
	 "{%- for message in messages %}"
	 "{{- '<|im_start|>' + message['role'] + '\\n' }}"
	 "{%- if message['content'] is string %}{{- message['content'] }}{%- endif %}"
	 "{%- if message['tool_calls'] is defined and message['tool_calls'] %}"
	 "{%- for tc in message['tool_calls'] %}"
	 "{%- set f = tc['function'] if tc['function'] is defined else tc %}"
	 "{%- if not loop.first or message['content'] %}{{- '\\n' }}{%- endif %}"
	 "{{- '<tool_call>\\n{\"name\": \"' + f['name'] + '\", \"arguments\": ' }}{{- f['arguments'] | tojson }}{{- '}\\n</tool_call>' }}"
	 "{%- endfor %}"
	 "{%- endif %}"
	 "{{- '<|im_end|>\\n' }}"
	 "{%- endfor %}"
	 "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"},
	/* Llama 3 headers; tool calls as the JSON object Llama 3.1 emits. */
	{"llama3",
	 "{{- bos_token }}"
	 "{%- for message in messages %}"
	 "{%- set role = 'ipython' if message['role'] == 'tool' else message['role'] %}"
	 "{{- '<|start_header_id|>' + role + '<|end_header_id|>\\n\\n' }}"
	 "{%- if message['tool_calls'] is defined and message['tool_calls'] %}"
	 "{%- for tc in message['tool_calls'] %}"
	 "{%- set f = tc['function'] if tc['function'] is defined else tc %}"
	 "{{- '{\"name\": \"' + f['name'] + '\", \"parameters\": ' }}{{- f['arguments'] | tojson }}{{- '}' }}"
	 "{%- endfor %}"
	 "{%- else %}{{- message['content'] | trim }}{%- endif %}"
	 "{{- '<|eot_id|>' }}"
	 "{%- endfor %}"
	 "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}"},
	/* Gemma: no system role (it is put before the first user text), "model" for the assistant. */
	{"gemma",
	 "{{- bos_token }}"
	 "{%- if messages[0]['role'] == 'system' %}"
	 "{%- set first_user_prefix = messages[0]['content'] + '\\n\\n' %}{%- set loop_messages = messages[1:] %}"
	 "{%- else %}{%- set first_user_prefix = '' %}{%- set loop_messages = messages %}{%- endif %}"
	 "{%- for message in loop_messages %}"
	 "{%- if message['role'] not in ['user', 'assistant'] %}"
	 "{{- raise_exception('gemma: only user and assistant turns after an optional system prompt') }}"
	 "{%- endif %}"
	 "{%- set role = 'model' if message['role'] == 'assistant' else 'user' %}"
	 "{{- '<start_of_turn>' + role + '\\n' + (first_user_prefix if loop.first else '') }}"
	 "{{- message['content'] | trim }}"
	 "{{- '<end_of_turn>\\n' }}"
	 "{%- endfor %}"
	 "{%- if add_generation_prompt %}{{- '<start_of_turn>model\\n' }}{%- endif %}"},
	/* Mistral [INST] turns, the system prompt before the first user text, eos after each answer. */
	{"mistral",
	 "{{- bos_token }}"
	 "{%- if messages[0]['role'] == 'system' %}"
	 "{%- set system_message = messages[0]['content'] + '\\n\\n' %}{%- set loop_messages = messages[1:] %}"
	 "{%- else %}{%- set system_message = '' %}{%- set loop_messages = messages %}{%- endif %}"
	 "{%- for message in loop_messages %}"
	 "{%- if message['role'] == 'user' %}"
	 "{{- '[INST] ' + (system_message if loop.first else '') + message['content'] + '[/INST]' }}"
	 "{%- elif message['role'] == 'assistant' %}"
	 "{{- ' ' + message['content'] }}{{- eos_token }}"
	 "{%- else %}"
	 "{{- raise_exception('mistral: only user and assistant turns after an optional system prompt') }}"
	 "{%- endif %}"
	 "{%- endfor %}"},
	/* Alpaca's instruction/response layout; eos closes each response. */
	{"alpaca",
	 "{%- if messages[0]['role'] == 'system' %}"
	 "{{- messages[0]['content'] + '\\n\\n' }}{%- set loop_messages = messages[1:] %}"
	 "{%- else %}"
	 "{{- 'Below is an instruction that describes a task. Write a response that appropriately completes the request.\\n\\n' }}"
	 "{%- set loop_messages = messages %}"
	 "{%- endif %}"
	 "{%- for message in loop_messages %}"
	 "{%- if message['role'] == 'user' %}"
	 "{{- '### Instruction:\\n' + message['content'] + '\\n\\n' }}"
	 "{%- elif message['role'] == 'assistant' %}"
	 "{{- '### Response:\\n' + message['content'] }}{{- eos_token }}{{- '\\n\\n' }}"
	 "{%- else %}"
	 "{{- raise_exception('alpaca: only user and assistant turns after an optional system prompt') }}"
	 "{%- endif %}"
	 "{%- endfor %}"
	 "{%- if add_generation_prompt %}{{- '### Response:\\n' }}{%- endif %}"},
};

const char *chat_builtin_template(const char *name)
{
	for (size_t i = 0; i < sizeof builtins / sizeof *builtins; i++)
		if (!strcmp(builtins[i].name, name))
			return builtins[i].src;
	return NULL;
}
