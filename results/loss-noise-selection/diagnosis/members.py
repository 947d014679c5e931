from metaopt.training.families import FAMILIES, FamilyMember
members = list(FAMILIES["mnist-wider"]) + [
    FamilyMember("48-48-10 relu, minibatch 32, projection 7", batch_size=32, projection_seed=7),
    FamilyMember("48-48-10 relu, minibatch 128, projection 8", batch_size=128, projection_seed=8),
    FamilyMember("48-48-10 relu, minibatch 16, projection 9", batch_size=16, projection_seed=9),
    FamilyMember("100-200-10 relu, minibatch 64, projection 10", input_dim=100, hidden=(200,), projection_seed=10),
    FamilyMember("100-200-10 relu, minibatch 10, projection 11", input_dim=100, hidden=(200,), batch_size=10, projection_seed=11),
    FamilyMember("48-48-10 tanh, minibatch 64, projection 12", activation="tanh", projection_seed=12),
]
