"""The generation engine: requests in, judged outcomes out, one resident model per process."""

from convfarm.engine.cache import resident_model
from convfarm.engine.request import GenerationOutcome, GenerationRequest, generation_params
from convfarm.engine.resident import ResidentModel, default_threads

__all__ = ["GenerationOutcome", "GenerationRequest", "ResidentModel", "default_threads", "generation_params",
           "resident_model"]
