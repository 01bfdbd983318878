"""Face detection: MTCNN boxes, scores and 5 landmarks for RGB photos (components/face_detection/mtcnn.py)."""

from components.face_detection.mtcnn import Face, FaceDetector, MissingDetectorWeights, nms

__all__ = ["Face", "FaceDetector", "MissingDetectorWeights", "nms"]
