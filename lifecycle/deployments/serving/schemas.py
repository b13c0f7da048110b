"""The request and response bodies of the serving API (pydantic: validation and the OpenAPI
document). Bodies are parsed by hand (serving/app.py: size, UTF-8, JSON, then these models),
so that every refusal has our one error shape and the token is checked before the body."""
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr

MAX_KEY_CHARS = 200
MAX_NOTE_CHARS = 2000


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class PredictRequest(Strict):
    inputs: list[StrictStr] = Field(description="The texts to answer, one output each (at least one).")
    key: Annotated[StrictStr, Field(max_length=MAX_KEY_CHARS)] | None = Field(
        None, description="A sticky key (a user or session id): the same key takes the same side of a canary "
                          "for the whole release.")


class ClassOutput(BaseModel):
    label: str
    probabilities: dict[str, float]


class TextOutput(BaseModel):
    text: str


class PredictResponse(BaseModel):
    request_id: str = Field(description="Quote it in POST /v1/feedback.")
    deployment: str
    model: str
    version: int
    route: Literal["stable", "canary"]
    outputs: list[ClassOutput | TextOutput]


class FeedbackRequest(Strict):
    request_id: StrictStr
    position: Annotated[StrictInt, Field(ge=0)] = Field(0, description="Which input of the request (0-based).")
    label: StrictStr | None = Field(None, description="The right label.")
    correct: StrictBool | None = Field(None, description="Whether the answer was right.")
    note: Annotated[StrictStr, Field(max_length=MAX_NOTE_CHARS)] = ""


class FeedbackResponse(BaseModel):
    request_id: str
    position: int
    predicted_label: str
    label: str
    correct: bool | None
    override: bool


class ErrorDetail(BaseModel):
    code: str
    message: str


class ErrorResponse(BaseModel):
    error: ErrorDetail


# --- the Open Inference Protocol (v2 REST) ---------------------------------------------------

Parameters = dict[str, StrictStr | StrictInt | float | StrictBool]


class InferInput(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: StrictStr
    shape: list[StrictInt]
    datatype: StrictStr
    parameters: Parameters | None = None
    data: list


class InferOutputRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: StrictStr
    parameters: Parameters | None = None


class InferRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: StrictStr | None = None
    parameters: Parameters | None = Field(None, description='"key": a sticky key, as in /v1 predict.')
    inputs: list[InferInput]
    outputs: list[InferOutputRequest] | None = None


class InferOutput(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    data: list


class InferResponse(BaseModel):
    model_name: str
    model_version: str | None = None
    id: str
    parameters: dict | None = None
    outputs: list[InferOutput]


class TensorMetadata(BaseModel):
    name: str
    datatype: str
    shape: list[int]


class ModelMetadata(BaseModel):
    name: str
    versions: list[str] | None = None
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]


class OipError(BaseModel):
    error: str
