"""ecosched: a backend-neutral scheduling core for LLM serving (EcoServe, CacheOPT, AccelGen).

Embedding it in a server::

    from ecosched import EcoschedConfig, Request, StepOutcome, build_scheduler

    scheduler = build_scheduler(EcoschedConfig(policy="ecoserve"))
    scheduler.add_request(Request("r1", num_prompt_tokens=100, max_output_tokens=20, arrival_s=0.0))
    decision = scheduler.schedule(now_s=0.0)      # run decision.prefills and decision.decodes
    scheduler.update(StepOutcome(decision.step_id, now_s=0.05))
"""

from ecosched.config import EcoschedConfig, load_config
from ecosched.core.decision import (
    Admission,
    Decision,
    EngineView,
    Preemption,
    PrefillChunk,
    StepOutcome,
    Stop,
    TopUp,
)
from ecosched.core.latency import LatencyModel, LinearLatencyModel
from ecosched.core.ledger import Allocated, AllocationFailure, BlockLedger
from ecosched.core.policy import Policy
from ecosched.core.predictor import (
    ConstantPredictor,
    LengthPredictor,
    NoisyOraclePredictor,
    OraclePredictor,
    Padder,
    Prediction,
)
from ecosched.core.request import (
    FinishReason,
    PreemptMode,
    Request,
    RequestRecord,
    RequestState,
    RequestStatus,
    SLOClass,
)
from ecosched.core.scheduler import Scheduler, SchedulerStats
from ecosched.errors import (
    CapacityError,
    ConfigError,
    ContextLengthError,
    DuplicateRequestError,
    EcoschedError,
    InvalidRequestError,
    OutcomeError,
    PredictorError,
    RegistryError,
    UnknownRequestError,
)
from ecosched.factory import PREDICTORS, build_predictor, build_scheduler
from ecosched.policies import POLICIES

__version__ = "0.1.0"

__all__ = [
    "POLICIES",
    "PREDICTORS",
    "Admission",
    "Allocated",
    "AllocationFailure",
    "BlockLedger",
    "CapacityError",
    "ConfigError",
    "ConstantPredictor",
    "ContextLengthError",
    "Decision",
    "DuplicateRequestError",
    "EcoschedConfig",
    "EcoschedError",
    "EngineView",
    "FinishReason",
    "InvalidRequestError",
    "LatencyModel",
    "LengthPredictor",
    "LinearLatencyModel",
    "NoisyOraclePredictor",
    "OraclePredictor",
    "OutcomeError",
    "Padder",
    "Policy",
    "Prediction",
    "PredictorError",
    "PreemptMode",
    "Preemption",
    "PrefillChunk",
    "RegistryError",
    "Request",
    "RequestRecord",
    "RequestState",
    "RequestStatus",
    "SLOClass",
    "Scheduler",
    "SchedulerStats",
    "StepOutcome",
    "Stop",
    "TopUp",
    "UnknownRequestError",
    "build_predictor",
    "build_scheduler",
    "load_config",
]
