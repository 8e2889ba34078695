"""The prompted text path shared by every method."""

from .prompted import PromptedClassText, context_from_init, text_embeddings

__all__ = ["PromptedClassText", "context_from_init", "text_embeddings"]
