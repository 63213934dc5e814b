"""The base of every settings section: what a scenario's YAML may say, strictly.

A component owns the settings it reads (`raysim.data.synthetic.SyntheticConfig`,
`raysim.fleet.make.FleetConfig`, ...); `raysim.scenario.schema` composes them into a scenario.

    >>> from pydantic import Field
    >>> class Radio(Section):
    ...     kbps: float = Field(250.0, gt=0)
    >>> Radio(kbps=1000.0).kbps
    1000.0
"""

from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    """A frozen pydantic model that forbids unknown keys and coerces nothing."""

    # strict: no coercion, so `true` is no count and "5" no number (YAML already types values);
    # allow_inf_nan=False: inf and NaN are no setting of any float field.
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)
