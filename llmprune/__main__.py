from llmprune.cli import run

run()
