"""Caption metrics of pycocoevalcap: Java METEOR 1.5, the Java PTB tokenizer, BLEU-4, ROUGE-L and CIDEr(-D).

METEOR and the PTB tokenizer run the jars pycocoevalcap ships, so they need a Java runtime. Numbers are only
comparable with papers when computed this way (METEOR 1.5, `-l en -norm`; PTB tokenization before BLEU / ROUGE-L /
CIDEr / METEOR, as COCOEvalCap does).
"""
import logging
import os
import shutil
import subprocess
import tempfile
from typing import Dict, List, Optional, Sequence, Tuple

__all__ = ["JAVA_INSTALL_HINT", "require_java", "Meteor", "ptb_tokenize", "caption_metrics"]

logger = logging.getLogger(__name__)

JAVA_INSTALL_HINT = (
    "install a Java runtime (8 or newer) and put `java` on PATH, e.g. `sudo apt-get install openjdk-17-jre-headless` "
    "(Debian/Ubuntu) or `conda install -c conda-forge openjdk`"
)


def require_java(purpose: str) -> None:
    """Raise RuntimeError naming `purpose` and how to install Java when no `java` executable is on PATH."""
    if shutil.which("java") is None:
        raise RuntimeError(
            f"{purpose} needs Java, and no `java` executable is on PATH: {JAVA_INSTALL_HINT}. Only METEOR can be "
            "left out (TEST.SKIP_METEOR True / --skip-meteor); the PTB tokenizer of the caption metrics always "
            "needs Java."
        )


def _one_line(text: str) -> str:
    # METEOR's stdio protocol is one line per segment, with fields separated by "|||".
    return " ".join(text.replace("|||", " ").split())


class Meteor:
    """One METEOR 1.5 Java process (pycocoevalcap's wrapper), reused for every call until `close()`.

    Starting it takes about 5 s, so score all pairs of an evaluation in one `score` call and share the process
    between calls. Use as a context manager so its pipes are closed cleanly.
    """

    def __init__(self):
        require_java("METEOR (Java METEOR 1.5 from pycocoevalcap)")
        from pycocoevalcap.meteor.meteor import Meteor as _CocoMeteor

        self._impl = _CocoMeteor()

    def score(self, hypotheses: Sequence[str], references: Sequence[Sequence[str]]) -> Tuple[float, List[float]]:
        """METEOR of each hypothesis against its references, and over the whole set.

        Args:
            hypotheses: N strings.
            references: N non-empty lists of reference strings, aligned with `hypotheses`.

        Returns:
            (corpus-level METEOR of the N pairs, list of N per-pair METEOR scores), all in [0, 1];
            (nan, []) when N is 0.
        """
        if len(hypotheses) != len(references):
            raise ValueError(f"METEOR: {len(hypotheses)} hypotheses but {len(references)} reference lists")
        if not hypotheses:
            return float("nan"), []
        res = {i: [_one_line(h)] for i, h in enumerate(hypotheses)}
        gts = {i: [_one_line(r) for r in refs] for i, refs in enumerate(references)}
        try:
            return self._impl.compute_score(gts, res)
        except (ValueError, BrokenPipeError) as e:
            if self._impl.lock.locked():  # the wrapper's destructor takes this lock: a held one would hang at exit
                self._impl.lock.release()
            proc = self._impl.meteor_p
            proc.kill()
            err = proc.stderr.read().decode(errors="replace")[-2000:]
            raise RuntimeError(f"METEOR's Java process failed ({e}); its stderr:\n{err}") from e

    def close(self) -> None:
        proc = self._impl.meteor_p
        for pipe in (proc.stdin, proc.stdout, proc.stderr):
            try:
                pipe.close()
            except OSError:
                pass
        proc.kill()
        proc.wait()

    def __enter__(self) -> "Meteor":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def ptb_tokenize(texts: Sequence[str]) -> List[str]:
    """Tokenize with the Stanford PTB tokenizer (lower-cased, punctuation removed), exactly as pycocoevalcap's
    `PTBTokenizer`, but through a temporary file in the system temp folder (the library writes next to its jar,
    which fails in a read-only installation) and with a check that every input line comes back.

    Args:
        texts: N strings (newlines inside a string become spaces).

    Returns:
        N tokenized strings (words joined by single spaces; "" for an empty input).
    """
    require_java("The PTB tokenizer of the caption metrics (Stanford CoreNLP 3.4.1 from pycocoevalcap)")
    from pycocoevalcap.tokenizer import ptbtokenizer

    if not texts:
        return []
    jar = os.path.join(os.path.dirname(os.path.abspath(ptbtokenizer.__file__)), ptbtokenizer.STANFORD_CORENLP_3_4_1_JAR)
    with tempfile.TemporaryDirectory(prefix="pixelllm_ptb_") as tmp:
        path = os.path.join(tmp, "sentences.txt")
        with open(path, "w", encoding="utf-8") as f:
            f.write("".join(" ".join(t.split()) + "\n" for t in texts))
        cmd = ["java", "-cp", jar, "edu.stanford.nlp.process.PTBTokenizer", "-preserveLines", "-lowerCase",
               "-encoding", "utf-8", path]
        proc = subprocess.run(cmd, capture_output=True)
    if proc.returncode != 0:
        raise RuntimeError(f"The PTB tokenizer failed (exit {proc.returncode}): {proc.stderr.decode()[-2000:]}")
    lines = proc.stdout.decode("utf-8").split("\n")
    if len(lines) < len(texts) or any(line.strip() for line in lines[len(texts):]):
        raise RuntimeError(f"The PTB tokenizer returned {len(lines)} lines for {len(texts)} captions")
    punctuation = set(ptbtokenizer.PUNCTUATIONS)
    return [" ".join(w for w in line.split() if w not in punctuation) for line in lines[: len(texts)]]


def caption_metrics(
    hypotheses: Sequence[str], references: Sequence[Sequence[str]], meteor: Optional[Meteor] = None
) -> Dict[str, float]:
    """BLEU-4, ROUGE-L, CIDEr (CIDEr-D, sigma 6) and, given a `Meteor`, METEOR of already tokenized captions
    (see `ptb_tokenize`), as COCOEvalCap computes them (its 0-1 scale; CIDEr may exceed 1).

    Args:
        hypotheses: N tokenized strings, one per item (an image, a region, ...).
        references: N non-empty lists of tokenized reference strings.
        meteor: an open `Meteor`, or None to leave METEOR out.

    Returns:
        {"BLEU-4", "METEOR" (only with `meteor`), "ROUGE-L", "CIDEr"} -> value (COCOEvalCap scale).
    """
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    if not hypotheses:
        raise ValueError("caption metrics: nothing to score")
    if any(len(refs) == 0 for refs in references):
        raise ValueError("caption metrics: every item needs at least one reference caption")
    res = {i: [h] for i, h in enumerate(hypotheses)}
    gts = {i: list(refs) for i, refs in enumerate(references)}
    results = {"BLEU-4": Bleu(4).compute_score(gts, res, verbose=0)[0][3]}
    if meteor is not None:
        results["METEOR"] = meteor.score(hypotheses, references)[0]
    results["ROUGE-L"] = Rouge().compute_score(gts, res)[0]
    results["CIDEr"] = Cider().compute_score(gts, res)[0]
    return {k: float(v) for k, v in results.items()}
