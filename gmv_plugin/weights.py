"""Locating pretrained weights, and failing fast when they are missing.

Nothing here downloads anything: each check looks where the owning library
would look, and raises :class:`MissingWeightsError` naming the model, the
expected location and how to provide the files offline.
"""


class MissingWeightsError(RuntimeError):
    """Pretrained weights for a model are not available on this machine."""

    def __init__(self, model, expected, how):
        self.model = model
        self.expected = expected
        self.how = how
        super().__init__(
            "Weights for %s are missing. Expected at: %s. %s"
            % (model, expected, how)
        )
