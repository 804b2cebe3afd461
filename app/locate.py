"""Find the model archive and the hyperparameters file in their search locations."""

import logging
from pathlib import Path

from app.errors import ErrorCode, RepackError

log = logging.getLogger(__name__)


def model_candidates(code_dir: Path, processing_dir: Path) -> list[Path]:
    """Return the model locations in search order; the first existing one wins."""
    return [
        code_dir / "models" / "model.tar.gz",
        code_dir / "model.tar.gz",
        processing_dir / "input" / "model" / "model.tar.gz",
    ]


def hyperparameters_candidates(code_dir: Path, processing_dir: Path) -> list[Path]:
    """Return the hyperparameters locations in search order; the first existing one wins."""
    return [
        code_dir / "hyperparams" / "hyperparameters.json",
        code_dir / "hyperparameters.json",
        processing_dir / "input" / "config" / "hyperparameters.json",
    ]


def find_model(explicit: Path | None, code_dir: Path, processing_dir: Path) -> Path:
    """Return the model archive to repack: `explicit` if given, else the first search hit."""
    return _find("model", explicit, model_candidates(code_dir, processing_dir),
                 ErrorCode.MODEL_NOT_FOUND, "--model")


def find_hyperparameters(explicit: Path | None, code_dir: Path, processing_dir: Path) -> Path:
    """Return the hyperparameters file: `explicit` if given, else the first search hit."""
    return _find("hyperparameters", explicit, hyperparameters_candidates(code_dir, processing_dir),
                 ErrorCode.HYPERPARAMETERS_NOT_FOUND, "--hyperparameters")


def _find(what: str, explicit: Path | None, candidates: list[Path], code: ErrorCode,
          option: str) -> Path:
    if explicit is not None:
        candidates = [explicit]
    for path in candidates:
        if path.is_file():
            log.info("Found %s: %s", what, path)
            return path
        if path.exists():
            raise RepackError(code, f"{path} exists but is not a regular file; "
                                    f"mount or copy the file itself there")
    if explicit is not None:
        raise RepackError(code, f"{explicit} does not exist (given with {option})")
    searched = ", ".join(str(path) for path in candidates)
    raise RepackError(code, f"no {candidates[0].name} found; searched, in order: {searched}. "
                            f"Mount the file at one of these paths or pass {option}")

