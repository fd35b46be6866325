"""The train command distils from a user's own `.keras` teacher, its layers named anything: the
taps are named by flag, checked before TensorFlow and against the loaded model."""

import json

import keras

from keras_endokd import train

CLASSES, SIZE = 8, 32  # the embedded synthetic dataset's classes; a tiny image size


def _saved_teacher(path):
    """A functional teacher with its own layer names, ending in a softmax (as keras.applications)."""
    inputs = keras.Input((SIZE, SIZE, 3))
    x = keras.layers.Rescaling(1 / 127.5, offset=-1, name="scale")(inputs)
    for i, width in enumerate((16, 32, 64), start=1):
        x = keras.layers.Conv2D(width, 3, strides=2, padding="same", activation="relu", name=f"stage{i}_out")(x)
    x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    outputs = keras.layers.Dense(CLASSES, activation="softmax", name="predictions")(x)
    keras.Model(inputs, outputs, name="my_teacher").save(path)
    return str(path)


def test_a_saved_teacher_with_its_own_layer_names_teaches_the_student(tmp_path, capsys):
    teacher = _saved_teacher(tmp_path / "my_teacher.keras")
    out = tmp_path / "run"
    flags = ["train", "--kd=response,relation,fitnets", "--heads=2", f"--teachers={teacher}",
             f"--image_size={SIZE}", "--epochs=1", "--teacher_views=1", "--noexport", "--nodeterministic",
             f"--output_dir={out}"]
    assert train.main([*flags, "--teacher_taps=stage3_ou"]) == 2
    err = capsys.readouterr().err
    assert "names feat_3 only, but --kd=fitnets also reads feat_2" in err
    assert train.main([*flags, "--teacher_taps=stage2_out,stage3_ou"]) == 2
    assert "has no layer 'stage3_ou'; its closest layer names are stage3_out" in capsys.readouterr().err
    assert train.main([*flags, "--teacher_taps=stage2_out,stage3_out"]) == 0, capsys.readouterr().err[-3000:]
    stdout = capsys.readouterr().out
    # The default weighting: proportional to CE + the sum of the terms.
    assert ("loss = 0.5*CE + 0.5*(1*response + 1*relation + 0.04*relation_rkd + 0*relation_kd + 1*fusion_ce "
            "+ 1*feature)") in stdout
    config = json.loads((out / "config.json").read_text())
    assert config["teacher_taps"] == ["stage2_out", "stage3_out"] and config["student_loss_weight"] == 0.5
    final = json.loads((out / "metrics.json").read_text())["training"]["final_epoch"]
    assert all(final[k] > 0 for k in ("loss_response", "loss_relation", "loss_feature", "student_loss"))
