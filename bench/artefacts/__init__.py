"""The paper's tables and figures: their catalogue, their views of the store, reproducing them,
significance, the comparison with the published numbers and the regression check."""
