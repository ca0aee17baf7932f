"""Student variants: several students of one teacher's cache, as the BAN paper's tables compare them.

``--variants ban,ban+l,cwtm,dkpp,kd:T=4`` names one student per item. An item is a loss
(:data:`bandistill.losses.LOSSES`) with optional ``:key=value`` settings:

=============  ==================================================
``T=4``        temperature (``--temperature``)
``alpha=0.9``  weight of kd's soft term (``--alpha``; kd only)
``model=X``    the student's architecture (``--student-model``)
=============  ==================================================

so ``kd:T=4:alpha=0.9`` and ``ban+l:model=resnet-32`` are variants. A variant's name is its
item as written in canonical form (settings in the order above, defaults left out); that
name is its identity in a run folder, so adding a variant to a finished run trains only it.
"""

from __future__ import annotations

from dataclasses import dataclass

from bandistill.errors import UserError
from bandistill.losses import LOSSES, make_loss

_KEYS = {"t": "temperature", "temperature": "temperature", "alpha": "alpha", "a": "alpha", "model": "model"}


@dataclass(frozen=True)
class Variant:
    """One student recipe: loss, temperature, alpha and (optionally) another architecture."""

    loss: str
    temperature: float = 1.0
    alpha: float = 0.5
    model: str | None = None

    @property
    def name(self) -> str:
        parts = [self.loss]
        if self.temperature != 1.0:
            parts.append(f"T={self.temperature:g}")
        if self.alpha != 0.5:
            parts.append(f"alpha={self.alpha:g}")
        if self.model:
            parts.append(f"model={self.model}")
        return ":".join(parts)

    @property
    def folder(self) -> str:
        """A file-system-safe form of the name (``kd:T=4`` -> ``kd-T4``)."""
        return self.name.replace(":", "-").replace("=", "").replace("+", "p")


def parse_variant(text: str) -> Variant:
    """One item of ``--variants``; :class:`UserError` naming the item when it is not one."""
    item = text.strip()
    loss, *settings = [p.strip() for p in item.split(":")]
    loss = loss.lower()
    if loss not in LOSSES:
        raise UserError(f"--variants item {item!r}: unknown loss {loss!r}; use one of {', '.join(LOSSES)} with "
                        "optional :T=<temperature>, :alpha=<kd weight>, :model=<architecture>")
    values: dict[str, object] = {}
    for setting in settings:
        key, eq, value = setting.partition("=")
        field = _KEYS.get(key.strip().lower())
        if not eq or field is None or field in values:
            raise UserError(f"--variants item {item!r}: {setting!r} is not T=<number>, alpha=<number> or "
                            "model=<architecture> (each at most once)")
        if field == "model":
            from bandistill.models import validate_model_name

            values[field] = validate_model_name(value.strip())
        else:
            try:
                values[field] = float(value)
            except ValueError:
                raise UserError(f"--variants item {item!r}: {key}={value!r} is not a number") from None
    variant = Variant(loss, **values)  # type: ignore[arg-type]
    if variant.alpha != 0.5 and loss != "kd":
        raise UserError(f"--variants item {item!r}: alpha weighs the soft term of kd only")
    make_loss(loss, temperature=variant.temperature, alpha=variant.alpha)  # the loss's own checks
    return variant


def parse_variants(text: str | list[str] | tuple[str, ...]) -> list[Variant]:
    """``--variants`` (comma-separated, or a list of items); duplicates refused."""
    items = text.split(",") if isinstance(text, str) else list(text)
    variants = [parse_variant(i) for i in items if str(i).strip()]
    if not variants:
        raise UserError("--variants is empty; name at least one student, e.g. --variants ban+l,ban,kd:T=4")
    names = [v.name for v in variants]
    dup = next((n for n in names if names.count(n) > 1), None)
    if dup:
        raise UserError(f"--variants names {dup!r} twice; each variant is one student")
    return variants
