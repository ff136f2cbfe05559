from llmprune.cli.main import run

run()
