"""`qa.ask`, with LangChain at the edges: a retriever over MemoryFS, an LLM that submits to the kernel's
scheduler (so chains share the engine with every other process), and RetrievalQA."""

from __future__ import annotations

import asyncio
from typing import Any

from langchain_core.callbacks import (
    AsyncCallbackManagerForLLMRun,
    AsyncCallbackManagerForRetrieverRun,
    CallbackManagerForLLMRun,
    CallbackManagerForRetrieverRun,
)
from langchain_core.documents import Document
from langchain_core.language_models.llms import LLM
from langchain_core.retrievers import BaseRetriever
from pydantic import ConfigDict

from llmos.core.context import Context
from llmos.core.sampling import SamplingParams
from llmos.memory import prompts


class MemoryRetriever(BaseRetriever):
    """Scoped semantic search as LangChain documents (metadata: source path, score)."""

    model_config = ConfigDict(arbitrary_types_allowed=True)
    fs: Any
    scope: str = "/"
    k: int = 4
    user: str = "root"

    def _get_relevant_documents(
        self, query: str, *, run_manager: CallbackManagerForRetrieverRun
    ) -> list[Document]:
        return [
            Document(
                page_content=h.text,
                metadata={"source": h.path, "score": h.score, "chunk": h.chunk},
            )
            for h in self.fs.search(query, self.scope, self.k, self.user)
        ]

    async def _aget_relevant_documents(
        self, query: str, *, run_manager: AsyncCallbackManagerForRetrieverRun
    ) -> list[Document]:
        return await asyncio.to_thread(
            self._get_relevant_documents, query, run_manager=run_manager.get_sync()
        )


class KernelLLM(LLM):
    """A LangChain LLM whose calls are generations of the calling process on the kernel's
    engine: scheduled, batched and accounted like any other. Async only (the engine lives
    on the kernel's event loop)."""

    model_config = ConfigDict(arbitrary_types_allowed=True)
    ctx: Any
    max_tokens: int = 128
    temperature: float = 0.0
    chat: bool = True  # wrap the prompt as one user turn in the model's chat template

    @property
    def _llm_type(self) -> str:
        return "llmos-kernel"

    def _call(
        self,
        prompt: str,
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> str:
        raise NotImplementedError("KernelLLM is async: use ainvoke / acall")

    async def _acall(
        self,
        prompt: str,
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> str:
        ctx: Context = self.ctx
        kernel = ctx.kernel
        tokens: str | list[int] | list[dict[str, Any]] = prompt
        if self.chat:
            tokens = await kernel.render_chat(
                [{"role": "user", "content": prompt}], ctx.process.model
            )
        params = SamplingParams(
            temperature=self.temperature,
            max_tokens=self.max_tokens,
            stop=tuple(stop or ()),
            # answers over retrieved text copy it: the prompt is long, so speculation's
            # "auto" drafts from the context where that is exact and pays (kernel/engine.py)
        )
        gen = await kernel.generate(ctx.process, tokens, params, stream=False)
        await gen.result()
        return str(gen.text)


async def ask(
    ctx: Context, fs: Any, question: str, scope: str = "/", k: int = 4, max_tokens: int = 128
) -> dict[str, Any]:
    """RetrievalQA (langchain-classic) with the `rag` template from /etc/prompts."""
    from langchain_classic.chains import RetrievalQA

    user = "root" if "*" in ctx.process.caps or "fs.*" in ctx.process.caps else ctx.process.name
    template = prompts.load(fs, "rag")
    if set(template.input_variables) != {"context", "question"}:
        raise prompts.MissingVariable(
            "/etc/prompts/rag.txt must use exactly {context} and {question}, "
            f"it uses {template.input_variables}"
        )
    chain = RetrievalQA.from_chain_type(
        llm=KernelLLM(ctx=ctx, max_tokens=max_tokens),
        retriever=MemoryRetriever(fs=fs, scope=scope, k=k, user=user),
        chain_type_kwargs={"prompt": template},
        return_source_documents=True,
    )
    out = await chain.ainvoke({"query": question})
    docs = out.get("source_documents", [])
    sources = list(dict.fromkeys(d.metadata["source"] for d in docs))
    return {"answer": str(out["result"]).strip(), "sources": sources}
