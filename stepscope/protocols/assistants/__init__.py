"""The Assistants v2 protocol (OpenAI, Azure Foundry Agents classic): threads, runs and run steps."""
