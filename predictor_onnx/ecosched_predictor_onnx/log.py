"""The prediction log (JSON Lines of `{"prompt", "output_tokens"}`) that `train --from-log` reads.

It lives in `ecosched.prediction_log`, where engines and the simulator write it without depending on
this package; the names are re-exported here."""

from ecosched.prediction_log import LogRecord as LogRecord
from ecosched.prediction_log import PredictionLog as PredictionLog
from ecosched.prediction_log import read_records as read_records
