"""Question generation (QG) and its multi-reference evaluation (QG-eval: "Evaluation of Question Generation Needs
More References", Findings of ACL 2023): the seq2seq QGModule and the metrics it and the scripts share."""
