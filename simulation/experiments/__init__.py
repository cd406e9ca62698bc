"""Private A/B experiments in simulation: a user-response simulator with a ground truth
(``response``) and a batched runner that measures many repeated experiments at once
(``batched``)."""

__all__: list[str] = []
