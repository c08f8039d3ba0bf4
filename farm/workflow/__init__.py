"""ComfyUI workflows: parse (API format, or a UI graph converted), validate with ComfyUI's
error shapes, and plan what the engine runs."""
from farm.workflow.errors import (
           ComfyError,
           ErrorType,
           InputError,
           NodeErrors,
           PromptError,
)
from farm.workflow.graph import (
           Link,
           MalformedLink,
           NodeCall,
           Workflow,
           load_workflow_file,
           parse_workflow,
)
from farm.workflow.plan import Plan, make_plan
from farm.workflow.ui_format import is_ui_format, ui_to_api
from farm.workflow.validate import ValidationResult, normalize, validate

__all__ = ["ComfyError", "ErrorType", "InputError", "Link", "MalformedLink", "NodeCall", "NodeErrors", "Plan",
           "PromptError", "ValidationResult", "Workflow", "is_ui_format", "load_workflow_file", "make_plan",
           "normalize", "parse_workflow", "ui_to_api", "validate"]
