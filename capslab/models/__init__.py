from capslab.models.base import BuildContext, Model, ModelOutput

__all__ = ["BuildContext", "Model", "ModelOutput"]
