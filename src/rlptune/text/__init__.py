"""The prompted text path shared by every method."""

from .prompted import PromptedClassText, text_embeddings

__all__ = ["PromptedClassText", "text_embeddings"]
