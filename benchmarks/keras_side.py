"""The tutorial's Keras code, run by the benchmarks in their TensorFlow environment (see tf_env.py).

    keras_side.py flow TRAIN_DIR BATCHES       ImageDataGenerator.flow_from_directory images/s (a whole
                                               first epoch from the start, then BATCHES more)
    keras_side.py dataset TRAIN_DIR BATCHES    image_dataset_from_directory + augmentation layers images/s
    keras_side.py tutorial TRAIN_DIR TEST_DIR TARGET MAX_EPOCHS MAX_SECONDS
                                               the tutorial's MNIST job until test accuracy >= TARGET

Same augmentation everywhere: rescale 1/255, width shift 0.3, zoom 0.2, horizontal flip; 28×28 grey.
Prints one JSON line.
"""

from __future__ import annotations

import json
import resource
import sys
import time

import tensorflow as tf
from tensorflow.keras import layers
from tensorflow.keras.preprocessing.image import ImageDataGenerator


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def augmenting_generator() -> ImageDataGenerator:
    return ImageDataGenerator(rescale=1.0 / 255, width_shift_range=0.3, zoom_range=0.2, horizontal_flip=True)


def flow(train_dir: str, batches: int) -> dict:
    """A whole first epoch from the start (listing the folders included), then `batches` more."""
    start = time.perf_counter()
    iterator = augmenting_generator().flow_from_directory(
        train_dir, target_size=(28, 28), color_mode="grayscale", batch_size=64, class_mode="categorical"
    )
    first_epoch = sum(len(next(iterator)[0]) for _ in range(len(iterator)))
    first_epoch_rate = first_epoch / (time.perf_counter() - start)
    start = time.perf_counter()
    images = sum(len(next(iterator)[0]) for _ in range(batches))
    return {
        "images_per_s": images / (time.perf_counter() - start),
        "first_epoch_images_per_s": first_epoch_rate,
        "peak_rss_mb": peak_rss_mb(),
    }


def dataset(train_dir: str, batches: int) -> dict:
    data = tf.keras.utils.image_dataset_from_directory(
        train_dir, image_size=(28, 28), color_mode="grayscale", batch_size=64, shuffle=True
    )
    augment = tf.keras.Sequential(
        [
            layers.Rescaling(1.0 / 255),
            layers.RandomTranslation(0.0, 0.3, fill_mode="nearest"),
            layers.RandomZoom(0.2, fill_mode="nearest"),
            layers.RandomFlip("horizontal"),
        ]
    )
    data = data.map(lambda x, y: (augment(x, training=True), y), num_parallel_calls=tf.data.AUTOTUNE)
    iterator = iter(data.prefetch(tf.data.AUTOTUNE))
    for _ in range(3):
        next(iterator)
    start = time.perf_counter()
    images = sum(int(next(iterator)[0].shape[0]) for _ in range(batches))
    return {"images_per_s": images / (time.perf_counter() - start), "peak_rss_mb": peak_rss_mb()}


def tutorial(train_dir: str, test_dir: str, target: float, max_epochs: int, max_seconds: float) -> dict:
    """The tutorial: Conv32-Conv32-Pool-Conv64-Conv64-Pool-Dense512-Dropout-Dense10, Adam, batch 32."""
    start = time.perf_counter()
    train = augmenting_generator().flow_from_directory(
        train_dir, target_size=(28, 28), color_mode="grayscale", batch_size=32, class_mode="categorical"
    )
    test = ImageDataGenerator(rescale=1.0 / 255).flow_from_directory(
        test_dir,
        target_size=(28, 28),
        color_mode="grayscale",
        batch_size=32,
        class_mode="categorical",
        shuffle=False,
    )
    model = tf.keras.Sequential(
        [
            layers.Input((28, 28, 1)),
            layers.Conv2D(32, 3, activation="relu"),
            layers.Conv2D(32, 3, activation="relu"),
            layers.MaxPooling2D(),
            layers.Conv2D(64, 3, activation="relu"),
            layers.Conv2D(64, 3, activation="relu"),
            layers.MaxPooling2D(),
            layers.Flatten(),
            layers.Dense(512, activation="relu"),
            layers.Dropout(0.5),
            layers.Dense(10, activation="softmax"),
        ]
    )
    model.compile(
        optimizer=tf.keras.optimizers.Adam(1e-3), loss="categorical_crossentropy", metrics=["accuracy"]
    )
    history: list[dict] = []

    class Watch(tf.keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            elapsed = time.perf_counter() - start
            history.append({"epoch": epoch + 1, "elapsed": elapsed, "test_acc": float(logs["val_accuracy"])})
            print(json.dumps(history[-1]), file=sys.stderr, flush=True)
            if logs["val_accuracy"] >= target or elapsed > max_seconds:
                self.model.stop_training = True

    model.fit(train, epochs=max_epochs, validation_data=test, callbacks=[Watch()], verbose=0)
    reached = next((h["elapsed"] for h in history if h["test_acc"] >= target), None)
    return {
        "params": int(model.count_params()),
        "history": history,
        "seconds_to_target": reached,
        "best_test_acc": max(h["test_acc"] for h in history),
        "peak_rss_mb": peak_rss_mb(),
    }


if __name__ == "__main__":
    mode, *rest = sys.argv[1:]
    if mode == "flow":
        answer = flow(rest[0], int(rest[1]))
    elif mode == "dataset":
        answer = dataset(rest[0], int(rest[1]))
    else:
        answer = tutorial(rest[0], rest[1], float(rest[2]), int(rest[3]), float(rest[4]))
    print(json.dumps(answer))
