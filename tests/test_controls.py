import torch
from transformers import BertForSequenceClassification

from ticketlab.models.controls import layer_permutation, permute_layers, reinitialize
from ticketlab.models.tiny import tiny_model


def test_permutation_moves_whole_layers_and_is_seeded():
    model = tiny_model("bert", num_hidden_layers=4)
    before = [layer.attention.self.query.weight.clone() for layer in model.encoder.layer]
    order = permute_layers(model, seed=5)
    assert order == layer_permutation(4, 5) and order != [0, 1, 2, 3] and sorted(order) == [0, 1, 2, 3]
    for position, source in enumerate(order):
        assert torch.equal(model.encoder.layer[position].attention.self.query.weight, before[source])
    assert layer_permutation(4, 5) == layer_permutation(4, 5)


def test_reinitialize_keeps_the_shape_and_changes_every_matrix():
    model = tiny_model("bert", model_class=BertForSequenceClassification, seed=0)
    query = model.bert.encoder.layer[0].attention.self.query.weight.clone()
    reinitialize(model, seed=1)
    new_query = model.bert.encoder.layer[0].attention.self.query.weight
    assert new_query.shape == query.shape and not torch.equal(new_query, query)
    again = tiny_model("bert", model_class=BertForSequenceClassification, seed=0)
    reinitialize(again, seed=1)
    assert torch.equal(again.bert.encoder.layer[0].attention.self.query.weight, new_query)
