"""The tiny pipeline builder: one token per grammar word, and the same pipeline in every process."""

from __future__ import annotations

import json
import subprocess
import sys

from transformers import CLIPTokenizer

from tpgrpo.world.prompts import VOCABULARY, load_prompts
from tpgrpo.world.tiny import clip_vocabulary

_DUMP = (
    "import json; from tpgrpo.world.tiny import clip_vocabulary; "
    "from tpgrpo.world.prompts import VOCABULARY; "
    "v, m = clip_vocabulary(VOCABULARY); print(json.dumps([v, m]))"
)


def test_every_word_is_one_token() -> None:
    vocab, merges = clip_vocabulary(VOCABULARY)
    tok = CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=14)  # type: ignore[arg-type]
    for record in load_prompts("train") + load_prompts("test"):
        ids = tok(record.prompt).input_ids
        assert len(ids) == len(record.prompt.split()) + 2  # BOS + one per word + EOS
        assert len(ids) <= 14


def test_vocabulary_is_the_same_in_every_process() -> None:
    """A rebuilt pipeline must map words to the same ids (pretraining resumes in new processes)."""
    runs = [
        subprocess.run([sys.executable, "-c", _DUMP], capture_output=True, text=True, check=True)
        for _ in range(2)
    ]
    first, second = (json.loads(r.stdout) for r in runs)
    assert first == second
    vocab, merges = clip_vocabulary(VOCABULARY)
    assert first == json.loads(json.dumps([vocab, merges]))
