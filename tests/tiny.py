"""The tiny setting of the tests that train: scikit-learn's 8x8 digits, a
ResNet8 teacher and student, 2 epochs on 300 images, 200 test images."""

DIGITS = dict(
    dataset="digits",
    epochs=2,
    train_subset=300,
    test_subset=200,
    teacher="resnet8",
    student="resnet8",
)
