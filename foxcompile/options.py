"""Backend options: foxcompile's own live under "fox."; everything else goes to Inductor."""
from dataclasses import dataclass, field

from .contract import DEFAULT_EPSILON, check_epsilon

COMPILERS = ("inductor", "aot_eager", "eager")
PREFIX = "fox."


@dataclass
class FoxOptions:
    epsilon: float = DEFAULT_EPSILON   # "fox.epsilon": pruning tolerance (0 turns pruning off)
    debug: bool | str = False          # "fox.debug": True logs to stderr; a path also dumps files
    compiler: str = "inductor"         # "fox.compiler": what runs the rewritten graph
    inductor: dict = field(default_factory=dict)  # every other option, for Inductor

    @classmethod
    def parse(cls, options: dict | None) -> "FoxOptions":
        parsed = cls()
        for key, val in (options or {}).items():
            if not key.startswith(PREFIX):
                parsed.inductor[key] = val
                continue
            name = key[len(PREFIX):]
            if name == "epsilon":
                parsed.epsilon = check_epsilon(val, '"fox.epsilon"')
            elif name == "debug":
                if not isinstance(val, (bool, str)):
                    raise ValueError(f'"fox.debug" must be True/False or a directory, got {val!r}')
                parsed.debug = val
            elif name == "compiler":
                if val not in COMPILERS:
                    raise ValueError(f'"fox.compiler" must be one of {COMPILERS}, got {val!r}')
                parsed.compiler = val
            else:
                raise ValueError(f"unknown foxcompile option {key!r}; known: "
                                 '"fox.epsilon", "fox.debug", "fox.compiler"')
        return parsed
