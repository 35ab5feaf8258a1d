"""Classic recommenders on the protocol every LLM result uses: popularity, SASRec, the MSE head.

`baselines.py` fits one on the train split and ranks the shared candidate file (`mmrec baseline pop|sasrec|mse`).
"""
