"""Evaluation: perplexity with the papers' protocol (``perplexity``) and zero-shot tasks through lm-eval
(``zeroshot``). Nothing is imported here, so ``import llmprune.evals`` pulls in neither lm_eval nor matplotlib."""
