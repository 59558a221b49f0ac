"""The jobs behind train.py, mine.py and evaluate.py: each builds its objects from the composed config and runs."""
