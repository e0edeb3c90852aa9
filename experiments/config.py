"""Experiment configs as objects: profiles, ``--set`` overrides, and what a run records.

Every experiment module ``experiments/<name>.py`` defines

* ``NAME``, its folder under the output directory;
* ``Config``, a frozen dataclass derived from :class:`ExperimentConfig` whose field defaults
  are the ``default`` profile;
* ``get_config(profile)`` for ``profile`` in :data:`PROFILES` (``'quick'``: tiny sizes for smoke
  tests; ``'default'``: the CPU figures quoted in the docstrings; ``'full'``: the larger
  settings, tens of minutes), built with :func:`select_profile`;
* ``run(config, out) -> dict``, which writes the figures and ``metrics.json`` into
  ``out / NAME`` and returns the metrics.

A config is changed from the command line with ``--set field=value`` (:func:`apply_overrides`):
each value is parsed to the field's annotated type, and an unknown field or a value of the
wrong type is an error that names the field. :func:`config_record` is what ``metrics.json``
records about the config of a run, and :mod:`experiments.provenance` what it records about the
code and machine that ran it (``experiments.common.write_metrics`` adds both).

The override parser is hand-written rather than ``ml_collections.config_flags``: the configs are
frozen, typed dataclasses, and the parser reads each value by its annotation (``Literal``
choices, tuples, ``X | None``) and names the field in every error, which ``config_flags`` (an
``absl.flags`` ``ConfigDict`` overrider, typed by the current value, not the annotation) would
not do without the same code on top, plus two dependencies.

>>> import dataclasses
>>> @dataclasses.dataclass(frozen=True, kw_only=True)
... class Config(ExperimentConfig):
...     steps: int = 400
...     sizes: tuple[int, ...] = (16, 32)
>>> apply_overrides(Config(), ["steps=800", "sizes=8,16,32"])
Config(profile='default', steps=800, sizes=(8, 16, 32))
"""

from __future__ import annotations

import ast
import dataclasses
import sys
import types
import typing
from collections.abc import Iterable
from typing import Any, ClassVar

#: The profile names every experiment's ``get_config`` accepts.
PROFILES = ("quick", "default", "full")


class ConfigError(ValueError):
    """An unknown profile, an unknown field, or a value that does not parse to its field."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class ExperimentConfig:
    """Base of every experiment's ``Config``: the profile the config was built from.

    Subclasses are ``@dataclasses.dataclass(frozen=True, kw_only=True)`` with annotated,
    defaulted fields (``int``, ``float``, ``bool``, ``str``, ``Literal[...]``, tuples of
    these, ``X | None``). ``profile`` is set by ``get_config`` and cannot be ``--set``.

    Checked whenever a config is built (``get_config``, ``--set``, ``dataclasses.replace``),
    with a :class:`ConfigError` naming the field, the value and what was expected:

    * every ``Literal`` field, and every entry of a ``tuple[Literal[...], ...]`` field, is one
      of its choices;
    * the fields named in the class attribute ``positive`` are ``>= 1`` (ints) or ``> 0``
      (floats; for a tuple, every entry), and those named in ``non_empty`` hold at least one
      entry.
    """

    profile: str = "default"
    #: Fields that must be positive (counts, sizes, steps).
    positive: ClassVar[tuple[str, ...]] = ()
    #: Tuple fields that must hold at least one entry.
    non_empty: ClassVar[tuple[str, ...]] = ()

    def __post_init__(self):
        check_config(self)


def _choices(tp: Any) -> tuple | None:
    """The choices of a ``Literal`` annotation (``X | None`` looked through), else None."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return _choices(args[0]) if len(args) == 1 else None
    return typing.get_args(tp) if typing.get_origin(tp) is typing.Literal else None


def check_config(config: ExperimentConfig) -> None:
    """Raise :class:`ConfigError` naming the field if ``config`` breaks a rule of
    :class:`ExperimentConfig` (a ``Literal`` choice, ``positive``, ``non_empty``)."""
    cls = type(config)
    where = f" of {cls.__module__.rpartition('.')[2]}"
    for field, tp in field_types(cls).items():
        value = getattr(config, field)
        choices = _choices(tp)
        if choices is not None and value is not None and value not in choices:
            raise ConfigError(
                f"field {field!r}{where}: {value!r} is not one of {', '.join(map(repr, choices))}"
            )
        args = typing.get_args(tp)
        if typing.get_origin(tp) is tuple and len(args) == 2 and args[1] is Ellipsis:
            choices = _choices(args[0])
            bad = [v for v in value if choices is not None and v not in choices]
            if bad:
                raise ConfigError(
                    f"field {field!r}{where}: {', '.join(map(repr, bad))} not among the "
                    f"allowed {', '.join(map(repr, choices))}"
                )
    for field in config.positive:
        value = getattr(config, field)
        for v in value if isinstance(value, tuple) else (value,):
            low = "an int >= 1" if isinstance(v, int) else "a number > 0"
            if isinstance(v, bool) or not (v >= 1 if isinstance(v, int) else v > 0):
                entries = " (every entry)" if isinstance(value, tuple) else ""
                raise ConfigError(f"field {field!r}{where}{entries} must be {low}, got {value!r}")
    for field in config.non_empty:
        if not len(getattr(config, field)):
            raise ConfigError(
                f"field {field!r}{where} needs at least one entry, got {getattr(config, field)!r}"
            )


def select_profile(profile: str, **profiles: ExperimentConfig) -> ExperimentConfig:
    """``profiles[profile]`` with its ``profile`` field set; a clear error for other names."""
    if set(profiles) != set(PROFILES):
        raise TypeError(f"give exactly the profiles {PROFILES}, got {tuple(profiles)}")
    if profile not in profiles:
        raise ConfigError(f"unknown profile {profile!r}; choose one of {', '.join(PROFILES)}")
    return dataclasses.replace(profiles[profile], profile=profile)


def field_types(config_cls: type) -> dict[str, Any]:
    """The settable fields of a config class and their resolved annotations."""
    hints = typing.get_type_hints(config_cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(config_cls) if f.name != "profile"}


def type_name(tp: Any) -> str:
    """A short readable name of an annotation (``int``, ``tuple[float, ...]``, ``'a' | 'b'``)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Literal:
        return " | ".join(repr(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(type_name(a) for a in args)
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return f"tuple[{type_name(args[0])}, ...]"
        return f"tuple[{', '.join(type_name(a) for a in args)}]"
    if tp is type(None):
        return "None"
    return getattr(tp, "__name__", str(tp))


_TRUE, _FALSE = ("true", "yes", "on", "1"), ("false", "no", "off", "0")


def parse_value(text: str, tp: Any) -> Any:
    """Parse command-line ``text`` to a value of annotation ``tp``; ``ValueError`` if it cannot.

    Scalars: ``int`` (``800``), ``float`` (``5e-3``), ``bool`` (``true``/``false``, ``yes``/``no``,
    ``1``/``0``), ``str``, ``Literal`` choices. Tuples: comma-separated (``1,2,3``; an empty string
    is the empty tuple) or a Python literal, which nested tuples need (``((3,3,1,16),(2,2,3,5))``).
    ``X | None``: ``none`` gives ``None``.
    """
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    text = text.strip()
    if origin in (typing.Union, types.UnionType):
        if type(None) in args and text.lower() in ("none", "null"):
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return parse_value(text, arg)
            except ValueError as err:
                errors.append(str(err))
        raise ValueError("; ".join(errors))
    if origin is tuple:
        if text[:1] in ("(", "["):
            try:
                literal = ast.literal_eval(text)
            except (ValueError, SyntaxError):
                raise ValueError(f"{text!r} is not a tuple literal") from None
            return _coerce(literal, tp)
        items = [] if text == "" else [item.strip() for item in text.split(",")]
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(parse_value(item, args[0]) for item in items)
        if len(items) != len(args):
            raise ValueError(f"{text!r} has {len(items)} items, {type_name(tp)} needs {len(args)}")
        return tuple(parse_value(item, a) for item, a in zip(items, args, strict=True))
    if origin is typing.Literal:
        for choice in args:
            if str(choice) == text:
                return choice
        raise ValueError(f"{text!r} is not one of {', '.join(repr(a) for a in args)}")
    if tp is bool:
        if text.lower() in _TRUE:
            return True
        if text.lower() in _FALSE:
            return False
        raise ValueError(f"{text!r} is not a bool (true/false)")
    if tp is int:
        try:
            return int(text)
        except ValueError:
            raise ValueError(f"{text!r} is not an int") from None
    if tp is float:
        try:
            return float(text)
        except ValueError:
            raise ValueError(f"{text!r} is not a float") from None
    if tp is str:
        return text
    raise ValueError(f"fields of type {type_name(tp)} cannot be set from the command line")


def _coerce(value: Any, tp: Any) -> Any:
    """Check a Python literal against ``tp`` (lists become tuples, ints may stand for floats)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, arg)
            except ValueError:
                pass
    elif origin is tuple and isinstance(value, list | tuple):
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0]) for v in value)
        if len(value) == len(args):
            return tuple(_coerce(v, a) for v, a in zip(value, args, strict=True))
    elif origin is typing.Literal:
        if value in args:
            return value
    elif tp is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    elif tp in (int, bool, str) and type(value) is tp:
        return value
    raise ValueError(f"{value!r} is not a {type_name(tp)}")


def split_assignment(assignment: str) -> tuple[str, str]:
    """``'steps=800'`` -> ``('steps', '800')``; a clear error without ``=``."""
    name, sep, text = assignment.partition("=")
    if not sep or not name.strip():
        raise ConfigError(f"--set expects field=value, got {assignment!r}")
    return name.strip(), text


def apply_overrides(
    config: ExperimentConfig, assignments: Iterable[str], *, name: str | None = None
) -> ExperimentConfig:
    """``config`` with each ``'field=value'`` applied, every value parsed to its field's type.

    Raises :class:`ConfigError` naming the field for an unknown field, for ``profile`` (chosen
    with ``--quick``/``--full``) and for a value that does not parse. ``name`` (the experiment)
    is only used in the messages.
    """
    types_ = field_types(type(config))
    where = f" of {name}" if name else ""
    changes: dict[str, Any] = {}
    for assignment in assignments:
        field, text = split_assignment(assignment)
        if field == "profile":
            raise ConfigError("the profile is chosen with --quick or --full, not --set")
        if field not in types_:
            raise ConfigError(
                f"unknown field {field!r}{where}; fields: {', '.join(sorted(types_))}"
            )
        try:
            changes[field] = parse_value(text, types_[field])
        except ValueError as err:
            raise ConfigError(
                f"bad value for field {field!r}{where} ({type_name(types_[field])}): {err}"
            ) from None
    return dataclasses.replace(config, **changes)


def describe_fields(config: ExperimentConfig) -> str:
    """One line per field: ``name: type = value`` (for ``--help``)."""
    types_ = field_types(type(config))
    return "\n".join(f"  {f}: {type_name(tp)} = {getattr(config, f)!r}" for f, tp in types_.items())


def overrides(config: ExperimentConfig) -> dict[str, Any]:
    """The fields in which ``config`` differs from its named profile (``{}`` if unknown)."""
    module = sys.modules.get(type(config).__module__)
    get_config = getattr(module, "get_config", None)
    if get_config is None or config.profile not in PROFILES:
        return {}
    base = get_config(config.profile)
    if type(base) is not type(config):
        return {}
    return {
        f: getattr(config, f)
        for f in field_types(type(config))
        if getattr(config, f) != getattr(base, f)
    }


def config_record(config: ExperimentConfig) -> dict[str, Any]:
    """What ``metrics.json`` stores as ``config``: every field (with ``profile``) and the
    ``overrides`` applied on top of that profile."""
    return {**dataclasses.asdict(config), "overrides": overrides(config)}
