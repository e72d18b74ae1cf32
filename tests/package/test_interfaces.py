"""The generated messages, services and actions import, and carry the fields and constants the node uses."""
import pytest

pytestmark = pytest.mark.ros


def test_query_fields_and_frame_policies():
    from builtin_interfaces.msg import Time

    from pixellm_ros.msg import Query

    assert (Query.FRAME_LATEST, Query.FRAME_NEXT, Query.FRAME_STAMP) == (0, 1, 2)
    q = Query(id="q1", text="Where is the cup?", frame_policy=Query.FRAME_STAMP, stamp=Time(sec=5), camera="front",
              max_image_age_s=0.5)
    assert (q.id, q.text, q.frame_policy, q.stamp.sec, q.camera) == ("q1", "Where is the cup?", 2, 5, "front")
    assert q.max_image_age_s == pytest.approx(0.5)
    assert Query().frame_policy == Query.FRAME_LATEST and Query().max_image_age_s == 0.0


def test_segmentation_result_status_constants_are_distinct():
    from pixellm_ros.msg import SegmentationResult

    names = ["OK", "NO_IMAGE", "STALE_IMAGE", "BUSY", "INVALID_QUERY", "INVALID_IMAGE", "MODEL_ERROR", "CANCELED",
             "NOT_READY", "TIMEOUT"]
    values = [getattr(SegmentationResult, n) for n in names]
    assert values[0] == 0 and len(set(values)) == len(values)
    assert SegmentationResult().status == SegmentationResult.OK


def test_segmentation_result_and_target_fields():
    from builtin_interfaces.msg import Duration
    from sensor_msgs.msg import Image, RegionOfInterest
    from std_msgs.msg import Header

    from pixellm_ros.msg import SegmentationResult, TargetMask

    t = TargetMask(index=1, label="the cup", score=0.75, mask=Image(encoding="mono8"),
                   bbox=RegionOfInterest(x_offset=1, y_offset=2, width=3, height=4), pixel_count=12)
    r = SegmentationResult(header=Header(frame_id="cam"), query_id="q", query_text="?", answer="a", targets=[t],
                           image_age=Duration(nanosec=1), inference_time=Duration(sec=2), model_id="m",
                           adapter_id="lora", status_message="", camera="front", incomplete_codebook_tokens=3)
    assert r.targets[0].bbox.width == 3 and r.targets[0].label == "the cup"
    assert r.incomplete_codebook_tokens == 3 and r.header.frame_id == "cam"


def test_services():
    from pixellm_ros.msg import Query, SegmentationResult
    from pixellm_ros.srv import LoadAdapter, Segment

    req = Segment.Request(query=Query(text="x"), use_image=True)
    assert req.image.height == 0 and isinstance(Segment.Response().result, SegmentationResult)
    assert LoadAdapter.Request(name="").name == ""
    resp = LoadAdapter.Response(success=True, message="loaded", active_adapter="kitchen")
    assert (resp.success, resp.active_adapter) == (True, "kitchen")


def test_ask_action():
    from pixellm_ros.action import Ask
    from pixellm_ros.msg import Query, SegmentationResult, TargetMask

    goal = Ask.Goal(query=Query(text="x"), rate_hz=2.0)
    assert goal.rate_hz == 2.0 and Ask.Goal().rate_hz == 0.0
    assert isinstance(Ask.Result().result, SegmentationResult)
    fb = Ask.Feedback(partial_answer="The", new_targets=[TargetMask()])
    assert fb.partial_answer == "The" and len(fb.new_targets) == 1
    assert isinstance(fb.standing_result, SegmentationResult)
