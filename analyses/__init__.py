"""Study definitions: what to train, measure and compare for each of the paper's studies."""
