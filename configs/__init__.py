"""Re-exports of medft/configs/<app>.py by the paths the documented commands name
(`--config=configs/<app>.py:...`, run from a source checkout). Not installed."""
