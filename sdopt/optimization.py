"""The base class every optimization derives from, and the store it registers in.

An optimization is declared, not dispatched: class attributes say what it is, what it needs,
what it conflicts with and what it must run after; ``check`` decides (purely) whether it
can do anything on this pipeline and machine; ``apply`` changes the pipeline and returns the
function that undoes exactly that change.

Example (a complete optimization, registered for the duration of the example):
    >>> from dataclasses import dataclass
    >>> from sdopt.optimization import Optimization, register
    >>> from sdopt.registry import unregister
    >>> class EvalMode(Optimization):
    ...     name = "eval_mode"
    ...     kind = "layout"
    ...     summary = "put the denoiser in eval mode"
    ...     def check(self, anatomy, caps, config):
    ...         return "already in eval mode" if not anatomy.denoiser.training else None
    ...     def apply(self, pipe, anatomy, caps, config):
    ...         anatomy.denoiser.eval()
    ...         return anatomy.denoiser.train
    >>> _ = register(EvalMode)
    >>> unregister("eval_mode")
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from sdopt.errors import ConfigError, PlanningError
from sdopt.requirements import Requirements
from sdopt.undo import Undo

if TYPE_CHECKING:
    from sdopt.anatomy import Anatomy
    from sdopt.capabilities import Capabilities
    from sdopt.footprint import Footprint


KINDS: tuple[str, ...] = (
    "scheduler",
    "sampling",
    "precision",
    "quantization",
    "vae",
    "layout",
    "attention",
    "memory",
    "cache",
    "compile",
)
"""Optimization kinds, in the order their steps are applied when nothing more specific is declared:
what changes weights' dtype or identity comes before what rearranges them, and compilation last."""

EFFECTS: tuple[str, ...] = ("speed", "memory", "speed+memory")


def within(
    low: float | None = None, high: float | None = None, *, above: bool = False, below: bool = False
) -> Mapping[str, Any]:
    """Field metadata for a numeric option's allowed range, checked wherever a config is made (a preset,
    ``extra``, a config instance): ``low`` <= value (< with ``above``), value <= ``high`` (< with
    ``below``). Non-numeric values of the field (``"auto"``) are left to its type.

    Examples:
        >>> import dataclasses
        >>> from sdopt.optimization import within
        >>> @dataclasses.dataclass(frozen=True)
        ... class Config:
        ...     interval: int = dataclasses.field(default=3, metadata=within(2))
        >>> dataclasses.fields(Config)[0].metadata["range"]
        (2, None, False, False)
    """
    return {"range": (low, high, above, below)}


def describe_range(bounds: tuple[float | None, float | None, bool, bool]) -> str:
    """A `within` range in words: ``>= 1``, ``> 0 and < 1``."""
    low, high, above, below = bounds
    parts = []
    if low is not None:
        parts.append(f"{'>' if above else '>='} {low:g}")
    if high is not None:
        parts.append(f"{'<' if below else '<='} {high:g}")
    return " and ".join(parts)


def _out_of_range(value: Any, bounds: tuple[float | None, float | None, bool, bool]) -> str | None:
    """The allowed range, described, when ``value`` is a number outside it."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    low, high, above, below = bounds
    too_low = low is not None and (value <= low if above else value < low)
    too_high = high is not None and (value >= high if below else value > high)
    return describe_range(bounds) if too_low or too_high else None


HUB_ID_IN_PRESETS: Mapping[str, bool] = {"hub_id_in_presets": True}
"""Field metadata for an option naming where weights come from (a hub id or a local folder): a preset
file may give a hub id only (``org/name``), never a path; code may give either. The report names
what was loaded."""

LOCAL_ONLY: Mapping[str, bool] = {"local_only": True}
"""Metadata of a config option only code may set, never a preset file: a directory sdopt would load
compiled programs from (``dataclasses.field(default="", metadata=LOCAL_ONLY)``). Frozen presets leave
such options out (a replay uses its own machine's default) and loading a file that sets one to anything
but its default is refused,
so a preset, which is plain data, cannot make sdopt run code from a place it names."""


@dataclass(frozen=True)
class NoConfig:
    """The configuration of an optimization that takes no options."""


class Optimization:
    """Base class of all optimizations. Subclass, fill the metadata, implement ``apply``.

    Metadata (class attributes):
        name: registry key, snake_case.
        kind: one of `KINDS`.
        summary: one line for tables and reports.
        Config: a frozen dataclass of options with defaults.
        requires: `Requirements` on machine and pipeline.
        conflicts: names that cannot be applied together with this one (stated once: the registry
            derives the reverse direction), unless `composes_with` says an option lifts it.
        group: an exclusive group (e.g. ``"attention"``): at most one member per plan.
        after / before: names this one must be applied after / before when both are planned.
        lossy: whether outputs change beyond numerical drift with the default options (`lossy_with`
            answers for given options).
        effect: what it buys: "speed", "memory" or "speed+memory".
        calibrates_on_first_call: whether its first pipeline call is a whole float call it learns
            from (static int8's calibration): a tuning warms it up with a whole call, not a short one.
        offload_regime: for offloads, the regime of `sdopt.footprint.REGIMES` it brings the
            peak down to ("model", "group", "sequential"). The memory budget decides such a step:
            planning asks `check_budget` with the planned footprint, and it wins conflicts
            against steps that only buy speed.
        tiles_decode: whether it bounds the VAE decode's activations to one tile (planning's
            memory estimate).
        speed_judged: whether the speed guard (`sdopt.speed_guard`) times a speed step and rolls it back
            when it does not make the call faster. ``False`` for steps whose gain a call at a fixed
            shape cannot show (a default step count, a solver whose point is fewer steps) or that exist
            for another step's sake (the fp16-fix VAE lets half precision keep the VAE in float16).
        version: the version of the meaning of its options, recorded in presets; bump it when an
            option's meaning changes, so a pinned preset made before says it was made for another
            version instead of silently doing something else.
    """

    name: ClassVar[str]
    kind: ClassVar[str]
    summary: ClassVar[str] = ""
    Config: ClassVar[type] = NoConfig
    requires: ClassVar[Requirements] = Requirements()
    conflicts: ClassVar[tuple[str, ...]] = ()
    group: ClassVar[str | None] = None
    after: ClassVar[tuple[str, ...]] = ()
    before: ClassVar[tuple[str, ...]] = ()
    lossy: ClassVar[bool] = False
    effect: ClassVar[str] = "speed"
    offload_regime: ClassVar[str | None] = None
    tiles_decode: ClassVar[bool] = False
    version: ClassVar[int] = 1
    calibrates_on_first_call: ClassVar[bool] = False
    speed_judged: ClassVar[bool] = True

    def check(self, anatomy: Anatomy, caps: Capabilities, config: Any) -> str | None:
        """Why this optimization would do nothing or cannot work here; ``None`` if it can. Pure."""
        return None

    def companions(self, anatomy: Anatomy, caps: Capabilities, config: Any) -> Mapping[str, str]:
        """Optimizations that must be planned together with this one for it to pay, each with why.

        Planning skips this one, with that reason, when a companion is not in the final plan
        (e.g. torchao's int8 kernels on CUDA are slow unless the denoiser is compiled). Pure.
        """
        return {}

    def composes_with(self, config: Any, other: str) -> bool:
        """Whether, with ``config``, this step runs correctly beside ``other`` although the two declare a
        conflict: an option that removes the conflict's cause (OpenVINO converting a UNet block by block,
        which leaves feature caching the blocks to skip). Planning keeps both then. Pure."""
        return False

    def storage(self, anatomy: Anatomy, config: Any, sizes: dict[str, float]) -> dict[str, float]:
        """The bytes each module component will take after this step, given ``sizes`` before it
        (planning's memory estimate; steps that cast, quantize or add weights say so). Pure."""
        return sizes

    def build_bytes(self, anatomy: Anatomy, config: Any, sizes: dict[str, float]) -> float:
        """Bytes this step holds for a while beyond what `storage` returns, while it is applied or builds
        at its first call (a converted copy of the weights, an export's and a calibration's copies),
        given ``sizes`` as the steps before it store them; planning's memory estimate counts the largest
        such peak. Pure."""
        return 0.0

    def compute_itemsize(self, config: Any) -> int | None:
        """Bytes per element the denoiser computes in once this step is applied (``None``: unchanged);
        planning's activation estimate. Pure."""
        return None

    def check_budget(self, anatomy: Anatomy, caps: Capabilities, config: Any, footprint: Footprint) -> str | None:
        """For offloads (`offload_regime`): why the planned ``footprint`` does not call for this one. Pure."""
        return None

    def resolve(self, anatomy: Anatomy, caps: Capabilities, config: Any) -> Any:
        """Turn automatic settings of ``config`` into concrete ones for this pipeline. Pure."""
        return config

    def apply(self, pipe: Any, anatomy: Anatomy, caps: Capabilities, config: Any) -> Undo:
        """Change ``pipe`` and return the function that restores it exactly."""
        raise NotImplementedError

    def describe(self, config: Any, anatomy: Anatomy) -> str:
        """What applying with ``config`` to this pipeline does, for the report (defaults to `summary`)."""
        return self.summary

    def lossy_with(self, config: Any) -> bool:
        """Whether applying with ``config`` changes outputs beyond numerical drift (defaults to `lossy`;
        an optimization whose options decide it, such as a precision, says so here)."""
        return self.lossy

    def gentler(self, config: Any) -> Any | None:
        """A config of this step that changes outputs less than ``config`` does, or None (the default).

        `tier="auto"` times it where ``config`` made the call faster but fell under the quality's
        fidelity floor, so a step whose lossy option fails there is not lost with its lossless part
        (``openvino_runtime``'s int8 falls back to its precision alone)."""
        return None

    # ---- configuration

    def make_config(self, values: Mapping[str, Any] | Any = None) -> Any:
        """Build this optimization's config from a mapping, checking names and types."""
        if isinstance(values, self.Config):
            self._check_ranges(values)
            return values
        values = dict(values or {})
        allowed = {item.name: item for item in dataclasses.fields(self.Config)}
        unknown = sorted(set(values) - set(allowed))
        if unknown:
            choices = ", ".join(sorted(allowed)) if allowed else "none (it takes no options)"
            raise ConfigError(self.name, f"unknown option(s) {', '.join(unknown)}; allowed options: {choices}")
        hints = typing.get_type_hints(self.Config)
        converted = {}
        for key, value in values.items():
            converted[key] = _coerce(self.name, key, value, hints[key])
        try:
            config = self.Config(**converted)
        except (TypeError, ValueError) as error:
            raise ConfigError(self.name, str(error)) from error
        self._check_ranges(config)
        return config

    def _check_ranges(self, config: Any) -> None:
        for item in dataclasses.fields(config):
            bounds = item.metadata.get("range")
            allowed = _out_of_range(getattr(config, item.name), bounds) if bounds else None
            if allowed:
                value = getattr(config, item.name)
                raise ConfigError(self.name, f"option {item.name}={value!r} is out of range; allowed: {allowed}")

    def hub_id_options(self) -> set[str]:
        """The options of :attr:`Config` a preset file may set to a hub id only (see :data:`HUB_ID_IN_PRESETS`)."""
        return {item.name for item in dataclasses.fields(self.Config) if item.metadata.get("hub_id_in_presets")}

    def local_only_options(self) -> set[str]:
        """The options of :attr:`Config` a preset file may not set (see :data:`LOCAL_ONLY`)."""
        return {item.name for item in dataclasses.fields(self.Config) if item.metadata.get("local_only")}

    def portable(self, options: Mapping[str, Any]) -> dict[str, Any]:
        """``options`` without the local-only ones: what a frozen preset records."""
        local = self.local_only_options()
        return {key: value for key, value in options.items() if key not in local}

    def config_to_dict(self, config: Any) -> dict[str, Any]:
        """A JSON-safe dict of every option of ``config``."""
        return {
            key: list(value) if isinstance(value, tuple) else value for key, value in dataclasses.asdict(config).items()
        }


def _coerce(optimization: str, key: str, value: Any, hint: Any) -> Any:
    """Check ``value`` against a simple type hint; lists become tuples for frozen configs."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(
                optimization,
                f"option {key}={value!r} is not allowed; choose one of {', '.join(map(repr, args))}",
            )
        return value
    if origin in (typing.Union, types.UnionType):
        for arg in args:
            try:
                return _coerce(optimization, key, value, arg)
            except ConfigError:
                continue
        raise ConfigError(optimization, f"option {key}={value!r} has the wrong type (expected {hint})")
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(optimization, f"option {key} expects a list, got {value!r}")
        item = args[0] if args else Any
        return tuple(_coerce(optimization, key, v, item) for v in value)
    if hint is Any:
        return value
    if hint is type(None):
        if value is not None:
            raise ConfigError(optimization, f"option {key} expects None, got {value!r}")
        return value
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, float) and not math.isfinite(value):
        # NaN compares false with everything: a NaN floor (static_int8's min_snr_db) would switch itself off.
        raise ConfigError(optimization, f"option {key} must be a finite number, got {value!r}")
    if isinstance(hint, type) and (not isinstance(value, hint) or (hint is int and isinstance(value, bool))):
        raise ConfigError(optimization, f"option {key} expects {hint.__name__}, got {type(value).__name__} {value!r}")
    return value


# ---- the registration store: low in the layers, so optimizations register here without importing the
# registry (which imports them); sdopt.registry answers the queries and loads the built-ins and plugins.

STORE: dict[str, Optimization] = {}
"""Registered optimizations by name (read through `sdopt.registry`, which loads them first)."""


def register(cls: type[Optimization], *, replace: bool = False) -> type[Optimization]:
    """Add an optimization class to the registry (usable as a class decorator).

    Examples:
        >>> from sdopt.optimization import Optimization, register
        >>> from sdopt.registry import unregister, get
        >>> @register
        ... class Nothing(Optimization):
        ...     name = "nothing"
        ...     kind = "memory"
        ...     def apply(self, pipe, anatomy, caps, config):
        ...         return lambda: None
        >>> get("nothing").kind
        'memory'
        >>> unregister("nothing")
    """
    _validate(cls)
    if cls.name in STORE and not replace and type(STORE[cls.name]) is not cls:
        raise ValueError(
            f"an optimization named {cls.name!r} is already registered "
            f"({type(STORE[cls.name]).__qualname__}); pass replace=True to override it"
        )
    STORE[cls.name] = cls()
    return cls


def _validate(cls: type[Optimization]) -> None:
    where = f"{cls.__module__}.{cls.__qualname__}"
    if not isinstance(cls, type) or not issubclass(cls, Optimization):
        raise TypeError(f"{where} must subclass sdopt.optimization.Optimization")
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not name.isidentifier():
        raise PlanningError(f"{where}: `name` must be a snake_case identifier, got {name!r}")
    if getattr(cls, "kind", None) not in KINDS:
        raise PlanningError(f"{where}: `kind` must be one of {', '.join(KINDS)}, got {getattr(cls, 'kind', None)!r}")
    if cls.effect not in EFFECTS:
        raise PlanningError(f"{where}: `effect` must be one of {', '.join(EFFECTS)}, got {cls.effect!r}")
    params = getattr(cls.Config, "__dataclass_params__", None)
    if params is None or not params.frozen:
        raise PlanningError(f"{where}: `Config` must be a frozen dataclass")
    for item in dataclasses.fields(cls.Config):
        if item.default is dataclasses.MISSING and item.default_factory is dataclasses.MISSING:
            raise PlanningError(f"{where}: config option {item.name!r} needs a default")
    if getattr(cls, "budgeted", False):
        raise PlanningError(
            f'{where}: `budgeted = True` was replaced by `offload_regime` ("model", "group" or "sequential": '
            "the peak it brings memory down to); set that instead"
        )
    for relation in ("conflicts", "after", "before"):
        value = getattr(cls, relation)
        if not isinstance(value, tuple) or not all(isinstance(v, str) for v in value):
            raise PlanningError(f"{where}: `{relation}` must be a tuple of optimization names")
        if name in value:
            raise PlanningError(f"{where}: `{relation}` names the optimization itself")
