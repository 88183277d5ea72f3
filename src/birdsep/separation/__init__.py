"""MixIT sound separation: model, loss, data, training and long-file inference."""
