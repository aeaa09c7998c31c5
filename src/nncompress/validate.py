"""Argument checks shared by the whole package.

Every public function validates its arguments with these helpers, so that bad input raises a
``TypeError`` (wrong kind of value) or ``ValueError`` (right kind, outside the allowed range)
whose message names the argument as the caller wrote it and states what is allowed. Each
helper returns the checked value, converted where that is useful (an ``int`` for a count, a
``float`` for a number).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from numbers import Integral, Real

import torch
from torch import nn

__all__ = ["module", "integer", "number", "fraction", "choice", "tensor", "mapping", "bits"]


def module(value, name: str = "model") -> nn.Module:
    """``value`` if it is a ``torch.nn.Module``.

    Parameters
    ----------
    value
        What the caller passed.
    name
        The argument's name, for the message.

    Returns
    -------
    nn.Module
        ``value``.

    Raises
    ------
    TypeError
        If it is not.
    """
    if not isinstance(value, nn.Module):
        raise TypeError(f"{name} must be a torch.nn.Module, got {type(value).__name__}")
    return value


def integer(value, name: str, low: int | None = None, high: int | None = None) -> int:
    """``value`` as an ``int`` in ``[low, high]``.

    Parameters
    ----------
    value
        What the caller passed.
    name
        The argument's name, for the message.
    low, high
        The bounds, included; None for unbounded.

    Returns
    -------
    int
        ``value``.

    Raises
    ------
    TypeError
        If ``value`` is not an integer (``bool`` is refused too).
    ValueError
        If it lies outside ``[low, high]``.
    """
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise TypeError(f"{name} must be an int{_interval(low, high, True, True)}, got {type(value).__name__} "
                        f"{value!r}")
    value = int(value)
    if (low is not None and value < low) or (high is not None and value > high):
        raise ValueError(f"{name} must be an int{_interval(low, high, True, True)}, got {value!r}")
    return value


def number(value, name: str, low: float | None = None, high: float | None = None,
           low_open: bool = False, high_open: bool = False) -> float:
    """``value`` as a finite ``float`` in the interval from ``low`` to ``high``.

    Parameters
    ----------
    value
        What the caller passed: a real number or a one-element tensor.
    name
        The argument's name, for the message.
    low, high
        The bounds; None for unbounded.
    low_open, high_open
        Exclude the bound (by default both are included).

    Returns
    -------
    float
        ``value``.

    Raises
    ------
    TypeError
        If ``value`` is not a real number (``bool`` is refused).
    ValueError
        If it is NaN, infinite, or outside the interval.
    """
    if isinstance(value, torch.Tensor) and value.numel() == 1 and not value.dtype.is_complex:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{name} must be a number{_interval(low, high, not low_open, not high_open)}, "
                        f"got {type(value).__name__} {value!r}")
    value = float(value)
    below = low is not None and (value <= low if low_open else value < low)
    above = high is not None and (value >= high if high_open else value > high)
    if not math.isfinite(value) or below or above:
        raise ValueError(f"{name} must be a finite number{_interval(low, high, not low_open, not high_open)}, "
                         f"got {value!r}")
    return value


def fraction(value, name: str) -> float:
    """A fraction in ``[0, 1)``, such as a sparsity (the fraction of weights removed).

    Parameters
    ----------
    value, name
        As :func:`number`.

    Returns
    -------
    float
        ``value``.

    Raises
    ------
    TypeError, ValueError
        As :func:`number`.
    """
    return number(value, name, 0.0, 1.0, high_open=True)


def choice(value, name: str, choices: Iterable):
    """``value`` if it is one of ``choices``.

    Parameters
    ----------
    value
        What the caller passed.
    name
        The argument's name, for the message.
    choices
        The allowed values.

    Returns
    -------
    object
        ``value``.

    Raises
    ------
    ValueError
        Otherwise, listing the choices.
    """
    choices = tuple(choices)
    try:
        ok = value in choices
    except TypeError:  # unhashable or incomparable values
        ok = False
    if not ok:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}; got {value!r}")
    return value


def tensor(value, name: str, dim: int | None = None, nonempty: bool = True, floating: bool = False,
           finite: bool = False) -> torch.Tensor:
    """``value`` if it is a tensor with the required properties.

    Parameters
    ----------
    value
        What the caller passed.
    name
        The argument's name, for the message.
    dim
        The required number of dimensions, or None for any.
    nonempty
        Refuse a tensor without elements.
    floating
        Require a floating-point dtype.
    finite
        Refuse NaN and infinite entries.

    Returns
    -------
    torch.Tensor
        ``value``.

    Raises
    ------
    TypeError
        If ``value`` is not a tensor, or not floating-point when ``floating``.
    ValueError
        For the wrong number of dimensions, no elements, or non-finite entries.
    """
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if floating and not value.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {value.dtype}")
    if dim is not None and value.dim() != dim:
        raise ValueError(f"{name} must be {dim}-d, got shape {tuple(value.shape)}")
    if nonempty and value.numel() == 0:
        raise ValueError(f"{name} must not be empty, got shape {tuple(value.shape)}")
    if finite and not bool(torch.isfinite(value).all()):
        raise ValueError(f"{name} must hold finite values only (no NaN or infinity)")
    return value


def mapping(value, name: str) -> Mapping:
    """``value`` if it is a mapping (a dict, for example).

    Parameters
    ----------
    value
        What the caller passed.
    name
        The argument's name, for the message.

    Returns
    -------
    Mapping
        ``value``.

    Raises
    ------
    TypeError
        Otherwise.
    """
    if not isinstance(value, Mapping):
        raise TypeError(f"{name} must be a mapping, got {type(value).__name__}")
    return value


def bits(value, name: str = "bits") -> int:
    """A bit width: an int in [1, 16].

    Parameters
    ----------
    value, name
        As :func:`integer`.

    Returns
    -------
    int
        ``value``.

    Raises
    ------
    TypeError, ValueError
        As :func:`integer`.
    """
    return integer(value, name, 1, 16)


def _interval(low, high, low_closed: bool, high_closed: bool) -> str:
    if low is None and high is None:
        return ""
    if high is None:
        return f" {'>=' if low_closed else '>'} {low}"
    if low is None:
        return f" {'<=' if high_closed else '<'} {high}"
    return f" in {'[' if low_closed else '('}{low}, {high}{']' if high_closed else ')'}"
