"""A tiny BERT sentence encoder and WordPiece tokenizer, built here with no hub.

The vocabulary covers the words the embedding-router tests send, so nothing they
say becomes ``[UNK]``; the weights are random but seeded, so every run builds
the same model. Saved as a Hugging Face directory (``config.json``,
``model.safetensors``, ``vocab.txt``, ``tokenizer.json``), which is what a user
downloads and what ``archway router convert --encoder`` reads.
"""

from __future__ import annotations

from pathlib import Path

SPECIAL = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
_TEXT = (
    "write explain story poem code python function what does this do a an the about "
    "robot dragon sea night help me with generation understanding creative writing "
    "reasoning prove math theorem solve hello there thanks weather today how are you "
    "can of for to and or in on is it new existing snippets libraries deep analysis "
    "logical problem boilerplate storytelling content assistance mathematical user "
    "prompts based functions generating understand"
)
WORDS = tuple(_TEXT.split())
PIECES = ("##s", "##ing", "##ed", "##er", "##ly")
PUNCTUATION = tuple(".,:;?!'\"()[]{}=-+*/_#<>")


def build_tokenizer(directory: Path) -> None:
    from tokenizers.implementations import BertWordPieceTokenizer

    directory.mkdir(parents=True, exist_ok=True)
    vocab = [*SPECIAL, *PUNCTUATION, *dict.fromkeys(WORDS), *PIECES]
    vocab += list("abcdefghijklmnopqrstuvwxyz0123456789")
    vocab += [f"##{c}" for c in "abcdefghijklmnopqrstuvwxyz0123456789"]
    (directory / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    tokenizer = BertWordPieceTokenizer(str(directory / "vocab.txt"), lowercase=True)
    tokenizer.save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(
        '{"do_lower_case": true, "tokenizer_class": "BertTokenizer"}\n', encoding="utf-8"
    )
    (directory / "special_tokens_map.json").write_text(
        '{"unk_token": "[UNK]", "sep_token": "[SEP]", "pad_token": "[PAD]", '
        '"cls_token": "[CLS]", "mask_token": "[MASK]"}\n',
        encoding="utf-8",
    )


def build_model(directory: Path, *, seed: int = 0) -> None:
    import torch
    from transformers import BertConfig, BertModel

    vocab_size = len((directory / "vocab.txt").read_text(encoding="utf-8").splitlines())
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
        hidden_act="gelu",
    )
    model = BertModel(config, add_pooling_layer=True).eval()
    model.save_pretrained(str(directory), safe_serialization=True)


def reference_embeddings(directory: Path, texts: list[str]) -> list[list[float]]:
    """Mean-pooled, L2-normalised embeddings from transformers' own forward pass:
    what sentence-transformers computes for all-MiniLM-L6-v2's kind of model."""
    import torch
    from transformers import BertModel, BertTokenizerFast

    tokenizer = BertTokenizerFast.from_pretrained(str(directory))
    model = BertModel.from_pretrained(str(directory)).eval()
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    pooled = (hidden * mask).sum(1) / mask.sum(1)
    return torch.nn.functional.normalize(pooled, dim=-1).tolist()
