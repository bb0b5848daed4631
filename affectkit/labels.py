"""Label schemas of the ABAW challenge editions.

One `LabelSchema` travels with the data, the model config, the metrics, CSV
headers and submission files: its order is the output order everywhere.
"""

import dataclasses

VA_NAMES = ("valence", "arousal")
VA_MISSING = -5.0
EXPR_MISSING = -1
AU_MISSING = -1

BASIC_EXPRESSIONS = (
    "Neutral",
    "Anger",
    "Disgust",
    "Fear",
    "Happiness",
    "Sadness",
    "Surprise",
)
ABAW1_AUS = ("AU1", "AU2", "AU4", "AU6", "AU12", "AU15", "AU20", "AU25")
ABAW2_AUS = (
    "AU1",
    "AU2",
    "AU4",
    "AU6",
    "AU7",
    "AU10",
    "AU12",
    "AU15",
    "AU23",
    "AU24",
    "AU25",
    "AU26",
)

EDITIONS = ("abaw1", "abaw2", "abaw3", "abaw4", "abaw5", "abaw6")


@dataclasses.dataclass(frozen=True)
class LabelSchema:
    """Names, order and missing markers of one ABAW edition's labels.

    Args:
        edition: one of `EDITIONS` (`"abaw1"` ... `"abaw6"`).
        expressions: expression class names in index order.
        aus: action-unit names in column order.

    Example:
    >>> schema = get_schema("abaw3")
    >>> schema.num_expressions, schema.num_aus
    (8, 12)
    """

    edition: str
    expressions: tuple
    aus: tuple

    va_names = VA_NAMES
    va_missing = VA_MISSING
    expr_missing = EXPR_MISSING
    au_missing = AU_MISSING

    @property
    def num_expressions(self):
        return len(self.expressions)

    @property
    def num_aus(self):
        return len(self.aus)

    @property
    def edition_number(self):
        return int(self.edition[len("abaw") :])

    @property
    def expr_score_uses_accuracy(self):
        """ABAW1/2 score EXPR and AU as 0.67/0.5 F1 plus accuracy; later editions by F1 alone."""
        return self.edition_number <= 2

    def get_config(self):
        return {"edition": self.edition}

    @classmethod
    def from_config(cls, config):
        return get_schema(config["edition"])


def get_schema(edition):
    """Returns the `LabelSchema` of an edition name such as `"abaw3"` (case-insensitive)."""
    if isinstance(edition, LabelSchema):
        return edition
    name = str(edition).lower().replace("-", "").replace("_", "")
    if name not in EDITIONS:
        raise ValueError(
            f"Unknown ABAW edition {edition!r}: expected one of {', '.join(EDITIONS)}."
        )
    number = int(name[len("abaw") :])
    if number == 1:
        return LabelSchema(name, BASIC_EXPRESSIONS, ABAW1_AUS)
    if number == 2:
        return LabelSchema(name, BASIC_EXPRESSIONS, ABAW2_AUS)
    return LabelSchema(name, BASIC_EXPRESSIONS + ("Other",), ABAW2_AUS)
