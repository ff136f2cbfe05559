"""Error classes. Every message is one line: the problem, then the fix.

They subclass the builtins (as huggingface_hub does) so callers can catch ``ValueError`` etc.; the CLI catches
``LlmpruneError`` only and prints ``error: <message>`` with exit code 2. Anything else is a bug and keeps its traceback.
"""


class LlmpruneError(Exception):
    """Base of all errors that are the user's to fix."""


class UserInputError(LlmpruneError, ValueError):
    """A bad flag, recipe, spec file or argument."""


class ModelNotFound(LlmpruneError, FileNotFoundError):
    """A model path, Hub id or alias that cannot be resolved."""


class DataNotFound(LlmpruneError, FileNotFoundError):
    """A calibration or evaluation dataset that cannot be found locally or online."""


class CorruptCheckpoint(LlmpruneError, OSError):
    """A saved llmprune checkpoint whose manifest, shards or tensors do not match."""


class UnsupportedArchitecture(LlmpruneError, TypeError):
    """A model whose decoder layers or Linear layers cannot be found."""


class NumericalError(LlmpruneError, ArithmeticError):
    """A numerical failure the user can act on (e.g. a Hessian that stays indefinite: raise --damp)."""


class MissingDependency(LlmpruneError, ImportError):
    """An optional dependency is needed for this feature."""


def require(module: str, extra: str):
    """Import an optional dependency or fail with an install hint."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingDependency(
            f"this feature needs '{module}' ({exc}); install it with: pip install 'llmprune[{extra}]'"
        ) from None
