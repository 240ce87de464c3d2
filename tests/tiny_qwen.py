"""A tiny Qwen2-architecture model and tokenizer, built here with no hub.

The tokenizer is a byte-level BPE trained with ``tokenizers`` on the router's own
prompt text, with Qwen2's pre-tokenizer split; the chat template is Qwen-style (a
default system message, then ``<|im_start|>role\\n...<|im_end|>``), stored inside
tokenizer_config.json as Arch-Router ships it. The model starts from random
weights; a few hundred steps of training teach it to answer
``{"route": "creative writing"}`` to the example routes, so the real
load -> prompt -> generate -> parse path has a known answer.
"""

from __future__ import annotations

import json
from pathlib import Path

from ext_proc.router import Route, Turn
from ext_proc.router.prompt import route_prompt

EXAMPLE = json.loads(
    (Path(__file__).parent / "data/arch_router_prompt.example.json").read_text(encoding="utf-8")
)
ROUTES = tuple(Route(r["name"], r["description"]) for r in EXAMPLE["routes"])
EXAMPLE_CONVERSATION = tuple(Turn(t["role"], t["content"]) for t in EXAMPLE["conversation"])
ANSWER = EXAMPLE["expected_model_output_example"]
TRAINING_CONVERSATIONS = (
    EXAMPLE_CONVERSATION,
    (Turn("user", "Tell me a poem"), Turn("assistant", "Roses."), Turn("user", "Another one")),
    (Turn("user", "Write a story about a dragon"),),
)

CHAT_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' %}\n"
    "    {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}\n"
    "{%- else %}\n"
    "    {{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}\n"
    "{%- endif %}\n"
    "{%- for message in messages %}\n"
    "    {%- if message.role != 'system' or not loop.first %}\n"
    "        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}\n"
    "    {%- endif %}\n"
    "{%- endfor %}\n"
    "{%- if add_generation_prompt %}\n"
    "    {{- '<|im_start|>assistant\\n' }}\n"
    "{%- endif %}\n"
)
SPECIAL = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
# Qwen2's pre-tokenizer split: letters, single digits, punctuation runs that
# swallow following newlines, whitespace.
_QWEN_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def build_tokenizer(directory: Path) -> None:
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_QWEN_SPLIT), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=600,
        special_tokens=list(SPECIAL),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    corpus = [route_prompt(ROUTES, c) for c in TRAINING_CONVERSATIONS] + [ANSWER] * 10
    tokenizer.train_from_iterator(corpus, trainer)
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(directory / "tokenizer.json"))
    config = {
        "tokenizer_class": "Qwen2Tokenizer",
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "model_max_length": 4096,
        "chat_template": CHAT_TEMPLATE,
    }
    (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2))


def build_model(directory: Path, *, train_steps: int = 40) -> None:
    """A 2-layer Qwen2 (hidden 64, GQA 4:2 heads, tied embeddings) saved in
    ``directory`` beside its tokenizer, trained to give ``ANSWER``."""
    import torch
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    # One thread: on a shared 2-core machine a second one makes each step 10x slower.
    torch.set_num_threads(1)
    tokenizer = PreTrainedTokenizerFast.from_pretrained(str(directory))
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=eos,
        pad_token_id=tokenizer.convert_tokens_to_ids("<|endoftext|>"),
    )
    model = Qwen2ForCausalLM(config)
    answer = [*tokenizer.encode(ANSWER, add_special_tokens=False), eos]
    examples = []
    for conversation in TRAINING_CONVERSATIONS:
        messages = [{"role": "user", "content": route_prompt(ROUTES, conversation)}]
        prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        ids = tokenizer.encode(prompt, add_special_tokens=False)
        labels = [-100] * len(ids) + answer
        examples.append((torch.tensor([ids + answer]), torch.tensor([labels])))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for step in range(train_steps):
        inputs, labels = examples[step % len(examples)]
        loss = model(input_ids=inputs, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()
    model.save_pretrained(str(directory))
    model.generation_config.save_pretrained(str(directory))


def transformers_greedy(directory: Path, prompt: str, max_new_tokens: int) -> list[int]:
    """Transformers' own greedy continuation of ``prompt`` (ids, prompt left out)."""
    import torch
    from transformers import AutoTokenizer, Qwen2ForCausalLM

    torch.set_num_threads(1)
    tokenizer = AutoTokenizer.from_pretrained(str(directory))
    model = Qwen2ForCausalLM.from_pretrained(str(directory))
    ids = tokenizer.encode(prompt, add_special_tokens=False)
    with torch.no_grad():
        out = model.generate(
            torch.tensor([ids]),
            attention_mask=torch.ones(1, len(ids), dtype=torch.long),
            max_new_tokens=max_new_tokens,
            do_sample=False,
        )
    return out[0][len(ids) :].tolist()
