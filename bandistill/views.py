"""Kept so ``from bandistill.views import ...`` keeps working: the view policies live in
:mod:`bandistill.data.views` (import them from ``bandistill.data``)."""

from bandistill.data.views import (  # noqa: F401
    PARAM_NAMES,
    VIEW_PLANS,
    ViewPlan,
    ViewPolicy,
    _splitmix64,
    expected_distinct,
    generation0_views_seen,
    normalize,
    view_hash,
    view_schedule,
)
