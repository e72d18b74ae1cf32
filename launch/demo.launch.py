"""Demo: the pixellm node, a synthetic demo camera, the demo planner asking its questions, and rviz2.

    ros2 launch pixellm_ros demo.launch.py [model_path:=...] [rviz:=false] [scene:=N]

The camera holds ONE scene (render_scene(default_rng([0, scene])), default pixellm_ros.scenes.DEMO_SCENE: the first
scene of seed 0 where each of the planner's questions has an answer), so every question is asked of a known scene
whatever the timing.

rviz2 shows config/pixellm.rviz: the overlay, the label image, the first target's mask (target_1) and the points.
The launch ends when the planner has asked its questions (`make demo` runs it this way with rviz:=false).
"""
import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, EmitEvent, IncludeLaunchDescription, RegisterEventHandler
from launch.conditions import IfCondition
from launch.event_handlers import OnProcessExit
from launch.events import Shutdown
from launch.launch_description_sources import PythonLaunchDescriptionSource
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from pixellm_ros.scenes import DEMO_SCENE, DEMO_SEED

IMAGE = "/camera/image_raw"


def generate_launch_description():
    share = get_package_share_directory("pixellm_ros")
    remap = [("image", IMAGE), ("camera_info", "/camera/camera_info")]
    planner = Node(package="pixellm_ros", executable="demo_planner", name="demo_planner", remappings=remap,
                   arguments=["--out", LaunchConfiguration("out")], parameters=[{"service": "/pixellm/segment"}],
                   output="screen")
    return LaunchDescription([
        DeclareLaunchArgument("model_path", default_value="", description="model folder; empty = the YAML's"),
        DeclareLaunchArgument("params_file", default_value=os.path.join(share, "config", "pixellm.yaml"),
                              description="node parameter YAML"),
        DeclareLaunchArgument("max_new_tokens", default_value="",
                              description="longest answer in tokens; empty = the YAML's"),
        DeclareLaunchArgument("rate_hz", default_value="5.0", description="demo camera frame rate"),
        DeclareLaunchArgument("scene", default_value=str(DEMO_SCENE),
                              description=f"the one scene the camera shows (seed {DEMO_SEED})"),
        DeclareLaunchArgument("out", default_value="demo_out", description="folder for the planner's overlays"),
        DeclareLaunchArgument("rviz", default_value="true", description="start rviz2"),
        IncludeLaunchDescription(
            PythonLaunchDescriptionSource(os.path.join(share, "launch", "pixellm.launch.py")),
            launch_arguments={"model_path": LaunchConfiguration("model_path"),
                              "params_file": LaunchConfiguration("params_file"),
                              "max_new_tokens": LaunchConfiguration("max_new_tokens"),
                              "image": IMAGE, "autostart": "true"}.items()),
        Node(package="pixellm_ros", executable="demo_camera", name="demo_camera", remappings=remap,
             parameters=[{"rate_hz": LaunchConfiguration("rate_hz"), "seed": DEMO_SEED, "num_scenes": 1,
                          "first_scene": LaunchConfiguration("scene")}],
             output="screen"),
        planner,
        # The demo is over when the planner has asked its questions: stop the node and the camera too.
        RegisterEventHandler(OnProcessExit(target_action=planner, on_exit=[
            EmitEvent(event=Shutdown(reason="the demo planner finished"))])),
        Node(package="rviz2", executable="rviz2", name="rviz2",
             arguments=["-d", os.path.join(share, "config", "pixellm.rviz")],
             condition=IfCondition(LaunchConfiguration("rviz"))),
    ])
