"""A tiny Qwen3-architecture model and BPE tokenizer built offline in seconds.

Used by the tests, the CPU demo and benchmarks: nothing is downloaded. The tokenizer is a byte-level
BPE trained on procedurally generated text (so any string tokenizes), with a ChatML chat template.
The model has random weights unless a caller trains it (see the toy world); head_dim is 32 because
vLLM's CPU attention rejects 16, and the vocabulary size equals the tokenizer size.
"""

from __future__ import annotations

import json
import logging
import random
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"]

# ChatML, as Qwen models use it; `add_generation_prompt` opens the assistant turn.
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

_WORDS = [
    "you",
    "are",
    "given",
    "a",
    "math",
    "reasoning",
    "problem",
    "and",
    "several",
    "candidate",
    "solutions",
    "some",
    "may",
    "be",
    "incorrect",
    "or",
    "contain",
    "errors",
    "aggregate",
    "the",
    "useful",
    "ideas",
    "into",
    "single",
    "high",
    "quality",
    "solution",
    "reason",
    "carefully",
    "if",
    "the",
    "candidates",
    "disagree",
    "work",
    "out",
    "which",
    "path",
    "is",
    "correct",
    "all",
    "of",
    "them",
    "wrong",
    "try",
    "different",
    "strategy",
    "end",
    "with",
    "final",
    "answer",
    "in",
    "boxed",
    "answer",
    "tags",
    "now",
    "write",
    "one",
    "improved",
    "self",
    "contained",
    "problem",
    "candidate",
    "solve",
    "compute",
    "the",
    "value",
    "of",
    "sum",
    "product",
    "what",
    "is",
    "find",
    "let",
    "so",
    "therefore",
    "we",
    "have",
    "step",
    "first",
    "then",
    "next",
    "total",
    "check",
    "fix",
    "any",
    "mistakes",
    "its",
    "approach",
    "option",
    "letter",
    "choose",
    "correct",
    "python",
    "code",
    "function",
    "input",
    "output",
    "def",
    "return",
    "print",
    "for",
    "while",
    "range",
    "list",
    "int",
    "str",
    "true",
    "false",
    "none",
    "import",
    "numbers",
    "sequence",
    "puzzle",
    "grid",
]


def _corpus(seed: int, lines: int) -> list[str]:
    """Procedural training text for the tokenizer: prompts, arithmetic, LaTeX and code fragments."""
    rng = random.Random(seed)
    out = []
    for _ in range(lines):
        kind = rng.randrange(5)
        if kind == 0:
            out.append(" ".join(rng.choice(_WORDS) for _ in range(rng.randint(5, 20))))
        elif kind == 1:
            terms = [str(rng.randint(0, 999)) for _ in range(rng.randint(2, 6))]
            out.append(" + ".join(terms) + " = " + str(sum(map(int, terms))))
        elif kind == 2:
            a, b = rng.randint(1, 99), rng.randint(1, 99)
            out.append(f"\\frac{{{a}}}{{{b}}} so the answer is \\boxed{{{a * b}}}")
        elif kind == 3:
            out.append(f"<answer>{rng.randint(0, 9999)}</answer> Answer: ({'ABCDEFGHIJ'[rng.randrange(10)]})")
        else:
            out.append(f"def f(x):\n    return x * {rng.randint(2, 9)}\nprint(f(int(input())))")
    return out


@dataclass(frozen=True)
class TinyModelSpec:
    """Shape of the tiny model. Defaults build in about a second; the toy world uses larger ones."""

    vocab_size: int = 1024
    hidden_size: int = 64
    intermediate_size: int = 128
    num_hidden_layers: int = 2
    num_attention_heads: int = 2
    num_key_value_heads: int = 1
    head_dim: int = 32
    max_position_embeddings: int = 4096
    seed: int = 0


def build_tokenizer(
    vocab_size: int = 1024, seed: int = 0, corpus: list[str] | None = None, individual_digits: bool = False
):
    """Train a byte-level BPE tokenizer with ChatML special tokens; returns a PreTrainedTokenizerFast.

    `corpus` replaces the built-in procedural text; `individual_digits` keeps every digit its own
    token (arithmetic is far easier to learn that way).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False)
    if individual_digits:
        tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
    else:
        tok.pre_tokenizer = byte_level
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus if corpus is not None else _corpus(seed, 4000), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        bos_token=None,
        unk_token=None,
        padding_side="left",
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_tiny_model(out_dir: str | Path, spec: TinyModelSpec | None = None, tokenizer=None) -> Path:
    """Write a tiny Qwen3 causal LM (random weights, float32) and its tokenizer to `out_dir`.

    `tokenizer` overrides the default procedural BPE tokenizer (the vocabulary follows its size).
    """
    import torch
    from transformers import GenerationConfig, Qwen3Config, Qwen3ForCausalLM

    spec = spec or TinyModelSpec()
    if spec.head_dim < 32:
        raise ValueError(f"head_dim={spec.head_dim}: vLLM's CPU attention needs head_dim >= 32")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = tokenizer if tokenizer is not None else build_tokenizer(spec.vocab_size, spec.seed)
    torch.manual_seed(spec.seed)
    config = Qwen3Config(
        vocab_size=len(tokenizer),
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_hidden_layers,
        num_attention_heads=spec.num_attention_heads,
        num_key_value_heads=spec.num_key_value_heads,
        head_dim=spec.head_dim,
        max_position_embeddings=spec.max_position_embeddings,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        dtype="float32",
    )
    model = Qwen3ForCausalLM(config)
    model.generation_config = GenerationConfig(
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, do_sample=True
    )
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    (out / "rsa_tiny_model.json").write_text(json.dumps(spec.__dict__, indent=2) + "\n")
    logger.info("tiny model written to %s (%d parameters)", out, sum(p.numel() for p in model.parameters()))
    return out
